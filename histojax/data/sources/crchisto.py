"""CRCHistoPhenotypes (Sirinukunwattana et al. 2016): nucleus centres on 100 colorectal H&E images.

Layout under $HISTOJAX_DATA/crchistophenotypes: `imgN/imgN.bmp|png`, `imgN/imgN_detection.mat`
(every marked nucleus) and `imgN/imgN_{epithelial,inflammatory,fibroblast,others}.mat` (the
nuclei that carry a class). Each .mat holds one N x 2 array (variable `detection`), column 0 = x
(image column), column 1 = y (image row), 1-based pixel units.

Coordinates returned here are **0-based float (x, y) = (column, row)**: x0 = x - 1, clamped into
[0, width - 1] x [0, height - 1] (a few release points lie in (0, 1), i.e. on the border).

Quirks of the release, accepted and counted (see `summary`): empty per-class files (0 x 2, an
image may have no nucleus of a class); typed points absent from the detection file; the same
point listed in two class files (resolved to the first class in CLASSES order); a few points
repeated in the detection file (one nucleus; `nuclei` keeps it once).
"""
import dataclasses
import pathlib
import re

import numpy as np
import scipy.io

from histojax.data import paths
from histojax.data.sources import common

# Pixel size of the release images: 500x500 crops of 20x whole-slide scans (Omnyx VL120) at
# 0.55 µm per pixel, as the dataset paper states (Sirinukunwattana et al., IEEE TMI 2016,
# "Locality Sensitive Deep Learning ...", section on the dataset). The paper's text is not in
# the search tool's corpus here: the value is the literature's, not re-checked on this machine.
MPP = 0.55

CLASSES = ('epithelial', 'inflammatory', 'fibroblast', 'others')
_VARIABLE = 'detection'
_DECIMALS = 3  # points are matched across files to 1/1000 px (the files are float64 copies)
_FOLDER = re.compile(r'^img(\d+)$')


@dataclasses.dataclass(frozen=True)
class CrcRecord:
  name: str  # 'img1' .. 'img100'
  image_path: pathlib.Path
  height: int
  width: int
  detected: np.ndarray  # float64 [N, 2] 0-based (x, y), every row of _detection.mat
  typed: np.ndarray  # float64 [M, 2] 0-based (x, y), every row of the four class files
  typed_class: np.ndarray  # int32 [M], index into CLASSES
  clamped: int  # points (detected + typed) moved into the image by clamping
  empty_class_files: int

  @property
  def group(self) -> str:
    """Split group: the source image (the release gives no patient IDs)."""
    return self.name

  @property
  def mat_paths(self) -> list[pathlib.Path]:
    """The .mat files this record was read from: detection, then CLASSES order."""
    return mat_paths(self.image_path.parent, self.name)


def mat_paths(folder: pathlib.Path, name: str) -> list[pathlib.Path]:
  return [folder / f'{name}_{kind}.mat' for kind in ('detection', *CLASSES)]


def read_points(path: pathlib.Path) -> np.ndarray:
  """One .mat of nucleus centres -> float64 [N, 2] (1-based x, y as stored); 0 x 2 if empty."""
  if not path.is_file():
    raise paths.DataError(f'CRCHisto annotation file {path} is missing.')
  try:
    content = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises ValueError, TypeError, OSError... for a damaged file
    raise paths.DataError(f'Cannot read .mat file {path}: {e} (truncated or not MATLAB?)') from e
  arrays = {k: v for k, v in content.items() if not k.startswith('__')}
  if _VARIABLE in arrays:
    value = arrays[_VARIABLE]
  elif len(arrays) == 1:  # tolerate a renamed variable when it is unambiguous
    value = next(iter(arrays.values()))
  else:
    raise paths.DataError(f'.mat file {path} has variables {sorted(arrays)}; expected one N x 2 '
                          f'array named {_VARIABLE!r}.')
  if not isinstance(value, np.ndarray) or value.dtype.kind not in 'fiu':
    raise paths.DataError(f'.mat file {path}: {_VARIABLE!r} is not a numeric array.')
  if value.size == 0:
    return np.zeros((0, 2), np.float64)  # empty class file: valid, the image has none
  if value.ndim != 2 or value.shape[1] != 2:
    raise paths.DataError(f'.mat file {path}: expected an N x 2 array of (x, y), '
                          f'got {value.shape}.')
  value = value.astype(np.float64)
  if not np.all(np.isfinite(value)):
    raise paths.DataError(f'.mat file {path} holds non-finite coordinates.')
  return value


def _to_pixels(points, height, width, path) -> tuple[np.ndarray, int]:
  """1-based (x, y) -> 0-based, clamped; refuses points clearly outside (wrong image?)."""
  p = points - 1.0
  limit = np.array([width - 1, height - 1], np.float64)
  # Allow a pixel of slack: the release has points in (0, 1) and at exactly 500.0.
  if len(p) and (np.any(p < -1.0) or np.any(p > limit + 1.0)):
    raise paths.DataError(f'{path}: points lie outside the {width}x{height} image '
                          f'(x range {points[:, 0].min():.1f}-{points[:, 0].max():.1f}, '
                          f'y range {points[:, 1].min():.1f}-{points[:, 1].max():.1f}).')
  clamped = np.clip(p, 0.0, limit)
  return clamped, int(np.sum(np.any(clamped != p, axis=1)))


def _record(folder: pathlib.Path) -> CrcRecord:
  name = folder.name
  image_path = common.find_file(folder, name, ('.bmp', '.png', '.tif'))
  if image_path is None:
    raise paths.DataError(f'CRCHisto folder {folder} has no image {name}.bmp|png.')
  (height, width), mode = common.image_header(image_path)
  common.check_rgb_mode(image_path, mode)
  det_path, *class_paths = mat_paths(folder, name)
  detected, n_clamped = _to_pixels(read_points(det_path), height, width, det_path)
  typed, typed_class, empty = [], [], 0
  for k, path in enumerate(class_paths):
    pts, c = _to_pixels(read_points(path), height, width, path)
    n_clamped += c
    empty += len(pts) == 0
    typed.append(pts)
    typed_class.append(np.full(len(pts), k, np.int32))
  return CrcRecord(name, image_path, height, width, detected, np.concatenate(typed),
                   np.concatenate(typed_class), n_clamped, empty)


def records(root=None, skip_bad: bool = False) -> common.RecordList:
  """Reads all image folders (sorted by number) and their .mat files; pixels are not decoded."""
  root = pathlib.Path(root) if root is not None else paths.dataset_dir('crchistophenotypes')
  folders = sorted((p for p in root.iterdir() if p.is_dir() and _FOLDER.match(p.name)),
                   key=lambda p: int(_FOLDER.match(p.name).group(1)))
  if not folders:
    raise paths.DataError(f'No CRCHisto image folders (img1 ... img100) in {root}.')
  bad = common.BadItems(skip_bad, f'CRCHisto {root}')
  items = [r for r in (bad.run(_record, f) for f in folders) if r is not None]
  out = bad.finish(items)
  out.notes.extend(dataset_notes(out))
  return out


def load_image(record: CrcRecord) -> np.ndarray:
  """uint8 [H, W, 3]."""
  image = common.read_rgb(record.image_path)
  if image.shape[:2] != (record.height, record.width):
    raise paths.DataError(f'Image {record.image_path} changed size since it was listed.')
  return image


def _keys(points: np.ndarray) -> list[tuple]:
  return [tuple(p) for p in np.round(points, _DECIMALS)]


def nuclei(record: CrcRecord) -> tuple[np.ndarray, np.ndarray, dict]:
  """Merges detection and class files into one list of unique nuclei.

  Returns (points float64 [K, 2] 0-based (x, y), labels int32 [K] with CLASSES index or -1 for
  a detected nucleus without class, stats). Rules, all deterministic: points are the same when
  equal to 1/1000 px; a point repeated in the detection file is one nucleus (kept once, at its
  first row); typed points with no detection are appended after the detections (in class
  order); a point listed in several class files takes the first class in CLASSES order. The
  raw rows (29,756 detected, 22,444 typed in the release) stay in record.detected / typed.
  """
  det_index, det_rows = {}, []
  for i, key in enumerate(_keys(record.detected)):
    if key not in det_index:
      det_index[key] = len(det_rows)
      det_rows.append(i)
  labels = np.full(len(det_rows), -1, np.int32)
  extra_points, extra_labels = [], []
  multi, conflicting, unmatched = 0, 0, 0
  seen = {}
  for point, key, cls in zip(record.typed, _keys(record.typed), record.typed_class):
    if key in seen:  # same point in a second class file (or twice in one)
      multi += 1
      conflicting += int(cls != seen[key])
      continue  # first class in CLASSES order wins: files are read in that order
    seen[key] = cls
    if key in det_index:
      labels[det_index[key]] = cls
    else:
      unmatched += 1
      extra_points.append(point)
      extra_labels.append(cls)
  points = np.concatenate([record.detected[det_rows], np.reshape(extra_points, (-1, 2))])
  labels = np.concatenate([labels, np.asarray(extra_labels, np.int32)])
  stats = {'typed_not_in_detection': unmatched, 'multi_class_points': multi,
           'conflicting_class_points': conflicting,
           'duplicate_detections': len(record.detected) - len(det_rows)}
  return points, labels, stats


def summary(items) -> dict:
  """Counts over records, for tests and dataset reports."""
  out = {'images': len(items), 'detected': 0, 'typed': 0, 'nuclei': 0, 'clamped_points': 0,
         'empty_class_files': 0, 'typed_not_in_detection': 0, 'multi_class_points': 0,
         'conflicting_class_points': 0, 'duplicate_detections': 0}
  per_class = dict.fromkeys(CLASSES, 0)
  for r in items:
    points, _, stats = nuclei(r)
    out['detected'] += len(r.detected)
    out['typed'] += len(r.typed)
    out['nuclei'] += len(points)
    out['clamped_points'] += r.clamped
    out['empty_class_files'] += r.empty_class_files
    for k, v in stats.items():
      out[k] += v
    for k, cls in enumerate(CLASSES):
      per_class[cls] += int(np.sum(r.typed_class == k))
  out['per_class'] = per_class
  return out


def dataset_notes(items) -> list[str]:
  """Strings for dataset info / reports describing how the release's quirks were handled."""
  s = summary(items)
  return [
      f'CRCHistoPhenotypes: {s["images"]} images, {s["detected"]} detected nuclei, {s["typed"]} '
      f'class labels ({", ".join(f"{k} {v}" for k, v in s["per_class"].items())}).',
      f'{s["empty_class_files"]} per-class files are empty (valid: no nucleus of that class); '
      f'{s["clamped_points"]} points outside [1, size] were clamped to the border.',
      f'{s["typed_not_in_detection"]} typed points are not in the detection files (kept as extra '
      f'nuclei); {s["multi_class_points"]} points appear in two class files '
      f'({s["conflicting_class_points"]} with different classes; first class in {CLASSES} '
      f'order kept); {s["duplicate_detections"]} repeated detection rows counted once '
      f'({s["nuclei"]} unique nuclei).',
      'No patient IDs are released: group splits by source image.',
  ]
