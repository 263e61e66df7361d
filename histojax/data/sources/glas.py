"""Warwick GlaS (MICCAI 2015 gland segmentation) in its release layout under $HISTOJAX_DATA/glas.

One flat folder: `<name>.bmp|png` beside `<name>_anno.bmp|png`, plus `Grade.csv` (columns: name,
patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)). Splits come from the name
prefix: train_ (85), testA_ (60), testB_ (20). Masks may hold one integer per gland (the
release) or be binary (some copies); binary masks are turned into objects by connected
components, which merges touching glands - `dataset_notes` says so for reports.
"""
import csv
import dataclasses
import functools
import pathlib
import re

import numpy as np
from scipy import ndimage

from histojax.data import paths
from histojax.data.sources import common

SPLITS = ('train', 'testA', 'testB')
GRADES = ('benign', 'malignant')
_NAME = re.compile(r'^(train|testA|testB)_(\d+)$')
_MASK_EXTS = ('.bmp', '.png', '.tif', '.tiff')
GRADE_FILE = 'Grade.csv'
# Pixel size of the release images: 0.62005 µm per pixel, 20x (glas.grand-challenge.org/Dataset).
# The slides were scanned (Zeiss MIRAX MIDI) at 0.465 µm/px and rescaled to 0.620 for the
# release (Sirinukunwattana et al., "Gland segmentation in colon histology images: the GlaS
# challenge contest", Medical Image Analysis 2017; paperswithcode.com/dataset/glas quotes it).
MPP = 0.62005


@dataclasses.dataclass(frozen=True)
class GlasRecord:
  name: str  # e.g. 'train_12'
  split: str  # 'train' | 'testA' | 'testB'
  image_path: pathlib.Path
  mask_path: pathlib.Path
  patient: str  # patient ID from Grade.csv (as text, e.g. '4')
  grade: str  # 'benign' | 'malignant' (GlaS grade)
  grade_detail: str  # Sirinukunwattana et al. 2015 grade, e.g. 'adenomatous'
  height: int
  width: int

  @property
  def label(self) -> int:
    """Grade as an integer: 0 benign, 1 malignant."""
    return GRADES.index(self.grade)

  @property
  def grade_path(self) -> pathlib.Path:
    """The Grade.csv this record's patient and grade come from."""
    return self.image_path.parent / GRADE_FILE


def read_grades(csv_path: pathlib.Path) -> dict[str, tuple[str, str, str]]:
  """Grade.csv -> {name: (patient, grade, grade_detail)}; header names are matched loosely."""
  try:
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise paths.DataError(f'Cannot read GlaS grade file {csv_path}: {e}') from e
  if not rows:
    raise paths.DataError(f'GlaS grade file {csv_path} is empty.')
  header = [h.strip().lower() for h in rows[0]]
  try:
    i_name = header.index('name')
    i_patient = next(i for i, h in enumerate(header) if h.startswith('patient'))
    i_grade = next(i for i, h in enumerate(header) if 'glas' in h)
  except (ValueError, StopIteration):
    raise paths.DataError(f'GlaS grade file {csv_path} has header {rows[0]}; expected columns '
                          '"name", "patient ID", "grade (GlaS)".') from None
  i_detail = next((i for i, h in enumerate(header) if 'sirinukunwattana' in h), None)
  grades = {}
  for line, row in enumerate(rows[1:], start=2):
    if len(row) <= max(i_name, i_patient, i_grade):
      raise paths.DataError(f'GlaS grade file {csv_path} line {line} is malformed: {row}')
    name, patient, grade = row[i_name].strip(), row[i_patient].strip(), row[i_grade].strip()
    if grade.lower() not in GRADES:
      raise paths.DataError(f'GlaS grade file {csv_path} line {line}: unknown grade {grade!r} '
                            f'(expected one of {GRADES}).')
    if not patient or name in grades:
      raise paths.DataError(f'GlaS grade file {csv_path} line {line}: empty patient ID or '
                            f'duplicate name {name!r}.')
    detail = row[i_detail].strip() if i_detail is not None and i_detail < len(row) else ''
    grades[name] = (patient, grade.lower(), detail)
  return grades


def _record(folder, name, grades) -> GlasRecord:
  split = _NAME.match(name).group(1)
  image_path = common.find_file(folder, name, ('.bmp', '.png'))
  mask_path = common.find_file(folder, name + '_anno', _MASK_EXTS)
  if mask_path is None:
    raise paths.DataError(f'GlaS image {image_path} has no mask {name}_anno.bmp|png in {folder}.')
  if name not in grades:
    raise paths.DataError(f'GlaS image {image_path} has no row in {folder / GRADE_FILE}.')
  image_hw, mode = common.image_header(image_path)
  common.check_rgb_mode(image_path, mode)
  mask_hw, _ = common.image_header(mask_path)
  common.check_same_size(image_path, mask_path, image_hw, mask_hw)
  patient, grade, detail = grades[name]
  return GlasRecord(name, split, image_path, mask_path, patient, grade, detail, *image_hw)


def _sort_key(name):
  split, number = _NAME.match(name).groups()
  return SPLITS.index(split), int(number)


def records(split=None, root=None, skip_bad: bool = False) -> common.RecordList:
  """Lists GlaS images (all, or one split / a tuple of splits) in a fixed order.

  Checks at listing time (headers only, cheap): every image has a mask of the same size and a
  Grade.csv row, and is RGB. Pixels are decoded by load_image / load_mask.
  """
  folder = pathlib.Path(root) if root is not None else paths.dataset_dir('glas', [GRADE_FILE])
  wanted = SPLITS if split is None else (split,) if isinstance(split, str) else tuple(split)
  unknown = set(wanted) - set(SPLITS)
  if unknown:
    raise paths.DataError(f'Unknown GlaS split(s) {sorted(unknown)}; expected {SPLITS}.')
  grades = read_grades(folder / GRADE_FILE)
  names = set()
  for p in common.list_images(folder):
    if p.stem.endswith('_anno'):
      continue
    if p.suffix.lower() in ('.bmp', '.png') and _NAME.match(p.stem):
      names.add(p.stem)
  bad = common.BadItems(skip_bad, f'GlaS {folder}')
  items = [bad.run(_record, folder, n, grades)
           for n in sorted(names, key=_sort_key) if _NAME.match(n).group(1) in wanted]
  items = [r for r in items if r is not None]
  if not items and not bad.messages:
    raise paths.DataError(f'No GlaS images (train_N / testA_N / testB_N .bmp|png) in {folder}.')
  return bad.finish(items, shared_patient_notes(items))


def load_image(record: GlasRecord) -> np.ndarray:
  """uint8 [H, W, 3]."""
  return common.read_rgb(record.image_path)


@functools.lru_cache(maxsize=8)
def _raw_mask(mask_path: pathlib.Path) -> np.ndarray:
  return common.read_label_mask(mask_path, binary_to_01=True)


def mask_is_binary(record: GlasRecord) -> bool:
  """True when the mask only says gland / not gland (values {0, 1} or {0, 255})."""
  return int(_raw_mask(record.mask_path).max(initial=0)) <= 1


def load_mask(record: GlasRecord, instances: bool = True) -> np.ndarray:
  """int32 [H, W]: 0 background, glands 1..K (instance ids), or 0/1 when instances=False.

  Instance labels of the release are kept; a binary mask gets connected-component ids
  (4-connectivity), so glands that touch share one id.
  """
  mask = _raw_mask(record.mask_path).copy()
  if mask.shape != (record.height, record.width):
    raise paths.DataError(f'Mask {record.mask_path} is {mask.shape} but image '
                          f'{record.image_path} is {(record.height, record.width)}.')
  if not instances:
    return (mask > 0).astype(np.int32)
  if mask.max(initial=0) <= 1:
    mask, _ = ndimage.label(mask > 0)
  return mask.astype(np.int32)


def shared_patient_notes(items) -> list[str]:
  """Notes on patients shared between the official train and test splits of `items`."""
  by_split = {s: {r.patient for r in items if r.split == s} for s in SPLITS}
  shared = by_split['train'] & (by_split['testA'] | by_split['testB'])
  if not shared:
    return []
  patients = {r.patient for r in items}
  return [f'GlaS official splits are not patient-disjoint: {len(shared)} of {len(patients)} '
          'patients have images in train and in testA/testB. Kept for comparability with '
          'published results; patient-disjoint evaluation needs a split of its own '
          '(histojax.data.splits.glas_val_split).']


def dataset_notes(items=None) -> list[str]:
  """Strings for dataset info / reports: mask kind (decodes each mask once) and split overlap."""
  items = records() if items is None else items
  binary = [r.name for r in items if mask_is_binary(r)]
  notes = []
  if binary:
    notes.append(f'GlaS masks are binary for {len(binary)} of {len(items)} images (not the '
                 'original instance-labelled _anno maps): gland objects were derived by '
                 'connected components, so touching glands are merged and object-level metrics '
                 '(object Dice, object Hausdorff) are not comparable with published numbers.')
  else:
    notes.append('GlaS masks are instance-labelled (one integer per gland), as released.')
  return notes + shared_patient_notes(items)
