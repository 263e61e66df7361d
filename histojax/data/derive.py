"""Derived training data from whole images: tiles, nucleus-centred crops, point -> disc masks.

Conventions: images are [H, W, C] (or [H, W]) arrays; points are float (x, y) = (column, row),
0-based pixels, as returned by histojax.data.sources.{crchisto,brecahad}; tile origins are
(row, col) of the top-left pixel.
"""
import numpy as np

from histojax import inference
from histojax.data import paths

# ---------------------------------------------------------------------------------------------
# Tiles with a tissue (background) filter


def saturation(image: np.ndarray) -> np.ndarray:
  """HSV saturation in [0, 1] of an RGB uint8 image: (max - min) / max, 0 for black pixels."""
  rgb = np.asarray(image, np.float32)
  hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
  return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range=(0.0, 1.0)) -> float:
  """Otsu's threshold (maximal between-class variance) of `values`; pixels > it are foreground."""
  hist, edges = np.histogram(np.ravel(values), bins=bins, range=value_range)
  hist = hist.astype(np.float64)
  centres = (edges[:-1] + edges[1:]) / 2
  w0 = np.cumsum(hist)  # weight of the class at or below each bin
  w1 = w0[-1] - w0
  m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
  m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
  between = w0 * w1 * (m0 - m1) ** 2
  # Upper edge of the best bin; a flat image (between == 0 everywhere) gives the first bin.
  return float(edges[1:][int(np.argmax(between))])


def tissue_mask(image: np.ndarray, threshold=None) -> tuple[np.ndarray, float]:
  """(bool [H, W] tissue pixels, saturation threshold used): saturation > Otsu, or > threshold.

  H&E tissue is stained (saturated); glass and white background are not. Otsu is taken over
  the whole image, so each tile is judged against its own image rather than against itself.
  """
  sat = saturation(image)
  t = otsu_threshold(sat) if threshold is None else float(threshold)
  return sat > t, t


def tile_origins(height: int, width: int, size: int, stride: int,
                 cover_edges: bool = False) -> np.ndarray:
  """int [T, 2] (row, col) of the top-left of each size x size tile, row-major.

  Positions 0, stride, 2*stride... that fit; cover_edges adds one more row/column of tiles
  flush with the bottom/right border so no pixel is left out (those overlap their neighbours).
  """
  if size <= 0 or stride <= 0:
    raise ValueError(f'tile size and stride must be positive, got {size}, {stride}.')

  def axis(n):
    return [] if n < size else inference.axis_starts(n, size, stride, cover_edges)

  rows, cols = axis(height), axis(width)
  return np.array([(r, c) for r in rows for c in cols], np.int64).reshape(-1, 2)


def tile_image(image: np.ndarray, size: int = 100, stride=None, *, mask=None, source: str = '',
               patient: str = '', min_tissue=None, saturation_threshold=None,
               cover_edges: bool = False) -> dict:
  """Cuts an image (and optionally its mask) into size x size tiles.

  Returns {'image': [T, size, size, C], 'mask': [T, size, size] (when given), 'origin': int
  [T, 2] (row, col), 'tissue': float [T] tissue fraction, 'source': str [T], 'patient': str [T]}.
  With min_tissue, tiles whose tissue fraction is below it are dropped.
  """
  image = np.asarray(image)
  height, width = image.shape[:2]
  if mask is not None and np.shape(mask)[:2] != (height, width):
    raise paths.DataError(f'tile_image({source!r}): mask {np.shape(mask)} and image '
                          f'{image.shape} differ in size.')
  stride = size if stride is None else stride
  origins = tile_origins(height, width, size, stride, cover_edges)
  tissue_px, _ = tissue_mask(image, saturation_threshold)
  # Integral image: the tissue fraction of every tile in O(1) each.
  integral = np.pad(np.cumsum(np.cumsum(tissue_px, 0, dtype=np.int64), 1), ((1, 0), (1, 0)))
  r, c = origins[:, 0], origins[:, 1]
  tissue = (integral[r + size, c + size] - integral[r, c + size] - integral[r + size, c] +
            integral[r, c]) / float(size * size)
  if min_tissue is not None:
    keep = tissue >= min_tissue
    origins, tissue = origins[keep], tissue[keep]
  out = {
      'image': np.stack([image[y:y + size, x:x + size] for y, x in origins])
               if len(origins) else np.zeros((0, size, size) + image.shape[2:], image.dtype),
      'origin': origins,
      'tissue': tissue.astype(np.float32),
      'source': np.array([source] * len(origins), dtype=object),
      'patient': np.array([patient] * len(origins), dtype=object),
  }
  if mask is not None:
    mask = np.asarray(mask)
    out['mask'] = (np.stack([mask[y:y + size, x:x + size] for y, x in origins])
                   if len(origins) else np.zeros((0, size, size) + mask.shape[2:], mask.dtype))
  return out


# ---------------------------------------------------------------------------------------------
# Nucleus-centred crops


def point_pixels(points: np.ndarray, height: int, width: int) -> np.ndarray:
  """Float (x, y) points -> int [N, 2] (x, y) of the nearest pixel, clamped into the image."""
  pts = np.reshape(np.asarray(points, np.float64), (-1, 2))
  xy = np.floor(pts + 0.5).astype(np.int64)
  return np.clip(xy, 0, [width - 1, height - 1])


def point_crops(image: np.ndarray, points, labels=None, size: int = 32) -> dict:
  """size x size crops centred on each point, the image reflect-padded at its borders.

  The point's pixel sits at crop[size // 2, size // 2]. Padding mirrors the image without
  repeating the edge pixel (numpy 'reflect'). Returns {'image': [N, size, size, ...],
  'center': int [N, 2] (x, y) pixel of each point, 'label': int [N] (-1 when labels is None)}.
  """
  image = np.asarray(image)
  height, width = image.shape[:2]
  centers = point_pixels(points, height, width)
  half = size // 2
  pad = [(size, size), (size, size)] + [(0, 0)] * (image.ndim - 2)
  padded = np.pad(image, pad, mode='reflect')
  crops = [padded[y - half + size:y - half + 2 * size, x - half + size:x - half + 2 * size]
           for x, y in centers]
  label = (np.full(len(centers), -1, np.int32) if labels is None
           else np.asarray(labels, np.int32).reshape(-1))
  if len(label) != len(centers):
    raise ValueError(f'{len(centers)} points but {len(label)} labels.')
  return {'image': np.stack(crops) if crops else np.zeros((0, size, size) + image.shape[2:],
                                                          image.dtype),
          'center': centers, 'label': label}


# ---------------------------------------------------------------------------------------------
# Points -> disc masks


def disc_owner(points, shape, radius: float) -> np.ndarray:
  """int32 [H, W]: index of the point whose disc covers the pixel, -1 for background.

  A pixel (row r, col c) is in the disc of point (x, y) when (c - x)^2 + (r - y)^2 <= radius^2.
  Where discs overlap, the nearest centre wins; exact ties go to the lower point index (so
  the result does not depend on anything but the order of `points`).
  """
  height, width = shape[:2]
  pts = np.reshape(np.asarray(points, np.float64), (-1, 2))
  owner = np.full((height, width), -1, np.int32)
  best = np.full((height, width), np.inf)
  r = float(radius)
  for i, (x, y) in enumerate(pts):
    r0, r1 = max(int(np.floor(y - r)), 0), min(int(np.ceil(y + r)) + 1, height)
    c0, c1 = max(int(np.floor(x - r)), 0), min(int(np.ceil(x + r)) + 1, width)
    if r0 >= r1 or c0 >= c1:
      continue
    rows, cols = np.ogrid[r0:r1, c0:c1]
    d2 = (cols - x) ** 2 + (rows - y) ** 2
    win = (d2 <= r * r) & (d2 < best[r0:r1, c0:c1])  # strict: an earlier point keeps a tie
    best[r0:r1, c0:c1][win] = d2[win]
    owner[r0:r1, c0:c1][win] = i
  return owner


def points_to_binary_mask(points, shape, radius: float = 4) -> np.ndarray:
  """uint8 [H, W]: 1 inside any point's disc, 0 elsewhere."""
  return (disc_owner(points, shape, radius) >= 0).astype(np.uint8)


def merge_classes(classes, merge=None) -> tuple[list[str], dict]:
  """Applies {old name: new name or None (drop)} to a class list.

  Returns (merged class names in order of first appearance, {old name: new index or None}).
  """
  merge = dict(merge or {})
  unknown = sorted(set(merge) - set(classes))
  if unknown:
    raise paths.DataError(f'Class merge map names unknown class(es) {unknown}; '
                          f'known: {list(classes)}.')
  merged, index = [], {}
  for name in classes:
    new = merge.get(name, name)
    if new is None:
      index[name] = None
      continue
    if new not in merged:
      merged.append(new)
    index[name] = merged.index(new)
  return merged, index


IGNORE = -1  # mask value scored nowhere: not in the loss, not in pixel metrics


def points_to_type_map(points, labels, shape, classes, radius: float = 4, merge=None,
                       untyped: int = 0) -> tuple[np.ndarray, list[str]]:
  """Per-class type map: int32 [H, W], 0 background, classes 1..K (after merging).

  labels: class names, or int indices into `classes`; -1 / None / '' mean unlabelled. An
  unlabelled point is not drawn (untyped=0: its nucleus reads as background) or drawn with
  the value IGNORE (untyped=IGNORE: a nucleus of unknown type, scored nowhere). A class
  dropped by merge is not drawn. Overlaps: nearest drawn centre wins, ties to the lower index
  (see disc_owner). Returns (type map, merged class names; map value k + 1 is merged class k).
  """
  if untyped not in (0, IGNORE):
    raise ValueError(f'untyped must be 0 or IGNORE ({IGNORE}), got {untyped}.')
  classes = list(classes)
  merged, index = merge_classes(classes, merge)
  pts = np.reshape(np.asarray(points, np.float64), (-1, 2))
  labels = list(labels)
  if len(labels) != len(pts):
    raise ValueError(f'{len(pts)} points but {len(labels)} labels.')
  values = np.zeros(len(pts), np.int32)  # 0: not drawn
  for i, label in enumerate(labels):
    if label is None or (isinstance(label, str) and not label) or (
        not isinstance(label, str) and int(label) < 0):
      values[i] = untyped
      continue
    if isinstance(label, str):
      if label not in index:
        raise paths.DataError(f'Unknown class name {label!r}; known: {classes}.')
      k = index[label]
    else:
      label = int(label)
      if label >= len(classes):
        raise paths.DataError(f'Class index {label} out of range for {len(classes)} classes.')
      k = index[classes[label]]
    values[i] = 0 if k is None else k + 1
  drawn = np.flatnonzero(values)
  owner = disc_owner(pts[drawn], shape, radius)
  lookup = np.concatenate([[0], values[drawn]]).astype(np.int32)
  return lookup[owner + 1], merged
