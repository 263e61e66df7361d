"""BreCaHAD (Aksac et al. 2019, BMC Research Notes): breast cancer H&E images with point labels.

UNTESTED ON THE REAL RELEASE: the dataset is not available here; this reader follows the
paper's description and third-party readers of it, and is tested only on small fixtures.

Layout under $HISTOJAX_DATA/brecahad: `images/<id>.tif` (or .jpg/.png) and
`groundTruth/<id>.json`, one JSON object per image mapping a category to a list of points
{"x": ..., "y": ...} normalised to [0, 1] by the image width and height. Categories: mitosis,
non_mitosis, apoptosis, tumor, non_tumor, tubule, non_tubule (the release is reported to spell
the last two lumen / non_lumen). Key spelling is matched leniently (case, '-', ' ', 'non'
without separator). Pixel coordinates: x * width, y * height, clamped into the image, 0-based
float (x, y) = (column, row) as in crchisto.
"""
import dataclasses
import json
import pathlib
import re

import numpy as np

from histojax.data import paths
from histojax.data.sources import common

CLASSES = ('mitosis', 'non_mitosis', 'apoptosis', 'tumor', 'non_tumor', 'tubule', 'non_tubule')
_ALIASES = {'lumen': 'tubule', 'non_lumen': 'non_tubule', 'tumour': 'tumor',
            'non_tumour': 'non_tumor', 'mitotic': 'mitosis', 'apoptotic': 'apoptosis'}
_SLACK = 1e-3  # normalised coordinates may round a hair outside [0, 1]


def canonical_class(key: str):
  """'Non-Tumor', 'nontumor', 'non tumor' -> 'non_tumor'; None when not a known category."""
  k = re.sub(r'[\s\-]+', '_', key.strip().lower())
  k = re.sub(r'^non(?!_)', 'non_', k)
  k = _ALIASES.get(k, k)
  return k if k in CLASSES else None


@dataclasses.dataclass(frozen=True)
class BrecahadRecord:
  name: str  # image id, e.g. 'Case_1-01'
  image_path: pathlib.Path
  json_path: pathlib.Path
  height: int
  width: int
  points: np.ndarray  # float64 [N, 2] 0-based (x, y) pixels
  labels: np.ndarray  # int32 [N], index into CLASSES

  @property
  def group(self) -> str:
    """Split group: the case (patient) when the id looks like 'Case_<n>-<k>', else the image."""
    m = re.match(r'^(case_?\d+)', self.name, re.IGNORECASE)
    return m.group(1) if m else self.name


def read_json(path: pathlib.Path, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads one ground-truth JSON into (points [N, 2] 0-based pixels (x, y), labels [N])."""
  try:
    with open(path, encoding='utf-8') as f:
      content = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise paths.DataError(f'Cannot read BreCaHAD annotation {path}: {e}') from e
  if not isinstance(content, dict):
    raise paths.DataError(f'BreCaHAD annotation {path}: expected a JSON object of categories.')
  points, labels = [], []
  for key in content:  # JSON order is kept; categories are not reordered
    cls = canonical_class(key)
    if cls is None:
      raise paths.DataError(f'BreCaHAD annotation {path}: unknown category {key!r} '
                            f'(known: {", ".join(CLASSES)}).')
    entries = content[key]
    if not isinstance(entries, list):
      raise paths.DataError(f'BreCaHAD annotation {path}: {key!r} is not a list of points.')
    for entry in entries:
      try:
        if any(isinstance(entry[k], bool) for k in 'xy'):  # float(True) would pass as 1.0
          raise TypeError
        x, y = float(entry['x']), float(entry['y'])
      except (TypeError, KeyError, ValueError, IndexError):
        raise paths.DataError(f'BreCaHAD annotation {path}: bad point {entry!r} under {key!r} '
                              '(expected {"x": float, "y": float}).') from None
      if not (-_SLACK <= x <= 1 + _SLACK and -_SLACK <= y <= 1 + _SLACK):
        raise paths.DataError(f'BreCaHAD annotation {path}: point ({x}, {y}) under {key!r} is '
                              'not normalised to [0, 1].')
      points.append((x * width, y * height))
      labels.append(CLASSES.index(cls))
  pts = np.reshape(np.asarray(points, np.float64), (-1, 2))
  pts = np.clip(pts, 0.0, [width - 1, height - 1])
  return pts, np.asarray(labels, np.int32)


def _record(image_path: pathlib.Path, gt_dir: pathlib.Path) -> BrecahadRecord:
  json_path = gt_dir / (image_path.stem + '.json')
  if not json_path.is_file():
    raise paths.DataError(f'BreCaHAD image {image_path} has no annotation {json_path}.')
  (height, width), mode = common.image_header(image_path)
  common.check_rgb_mode(image_path, mode)
  points, labels = read_json(json_path, height, width)
  return BrecahadRecord(image_path.stem, image_path, json_path, height, width, points, labels)


def records(root=None, skip_bad: bool = False) -> common.RecordList:
  """Lists images with their points, sorted by image id; pixels are not decoded."""
  root = pathlib.Path(root) if root is not None else paths.dataset_dir(
      'brecahad', ['images', 'groundTruth'])
  image_dir, gt_dir = root / 'images', root / 'groundTruth'
  for d in (image_dir, gt_dir):
    if not d.is_dir():
      raise paths.DataError(f'BreCaHAD folder {d} is missing (expected images/ + groundTruth/).')
  images = common.list_images(image_dir)
  if not images:
    raise paths.DataError(f'No images in {image_dir}.')
  bad = common.BadItems(skip_bad, f'BreCaHAD {root}')
  items = [r for r in (bad.run(_record, p, gt_dir) for p in images) if r is not None]
  stems = {p.stem for p in images}
  orphans = sorted(p.name for p in gt_dir.glob('*.json')
                   if common.visible(p) and p.stem not in stems)
  notes = ['BreCaHAD reader is untested on the real release (fixtures only).']
  if orphans:
    notes.append(f'{len(orphans)} annotation file(s) without an image were ignored: '
                 f'{", ".join(orphans[:5])}')
  return bad.finish(items, notes)


def load_image(record: BrecahadRecord) -> np.ndarray:
  """uint8 [H, W, 3]."""
  return common.read_rgb(record.image_path)
