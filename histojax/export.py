"""Pathologist-ready exports of a predicted label map: a colour palette PNG, classes.json,
QuPath-importable GeoJSON polygons (and their inverse, `rasterize`) and a centroid CSV.

Pure numpy/scipy/PIL/shapely, so it runs anywhere predict does. Coordinates are full-resolution
pixel coordinates, origin top-left, x = column, y = row; pixel (r, c) is the unit square
x in [c, c+1], y in [r, r+1], so polygons follow pixel edges and enclose exactly the object's
pixels (rasterizing them with pixel-centre sampling gives the label map back).
An object is a 4-connected component (scipy.ndimage.label's default structure) of one class.
"""
import csv
import json
import pathlib
import uuid

import numpy as np
from PIL import Image
from scipy import ndimage
import shapely
import shapely.geometry

from histojax.data.sources import annotations

# Okabe-Ito, colour-blind safe: background black, then the foreground classes (cycled).
PALETTE = (
    (0, 0, 0),
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)
OBJECT_TYPES = ('annotation', 'detection')


def class_colours(num_classes) -> list[tuple[int, int, int]]:
  """Colour of each class index: black for 0, then PALETTE's foreground colours, cycled."""
  fg = PALETTE[1:]
  return [PALETTE[0] if i == 0 else fg[(i - 1) % len(fg)] for i in range(num_classes)]


def _check_labels(labels, num_classes, where):
  """labels as an integer [H, W] array in 0..num_classes-1, else ValueError naming `where`."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{where}: labels must be an integer [H, W] array, got '
                     f'{labels.dtype} {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{where}: label values {labels.min()}..{labels.max()} outside '
                     f'0..{num_classes - 1}')
  return labels


def save_label_png(labels, path, num_classes):
  """A palette PNG: pixel value i is class i (np.asarray(Image.open(path)) gives the labels
  back) and palette entry i is class_colours(num_classes)[i], so viewers show it in colour."""
  if num_classes > 256:
    raise ValueError(f'{path}: a palette PNG holds at most 256 classes, not {num_classes}')
  labels = _check_labels(labels, num_classes, str(path))
  image = Image.fromarray(labels.astype(np.uint8), mode='P')
  image.putpalette([v for rgb in class_colours(num_classes) for v in rgb])
  image.save(path)


def classes_json(class_names, path):
  """Writes [{index, name, color [r, g, b], hex}] for each class (the legend of the PNG and
  the GeoJSON colours) to `path`; returns the list."""
  entries = [{'index': i, 'name': name, 'color': list(rgb),
              'hex': '#{:02x}{:02x}{:02x}'.format(*rgb)}
             for i, (name, rgb) in enumerate(zip(class_names, class_colours(len(class_names))))]
  pathlib.Path(path).write_text(json.dumps(entries, indent=2, ensure_ascii=False) + '\n',
                                encoding='utf-8')
  return entries


def _component_geometry(mask, row0, col0):
  """The exact pixel-edge outline of one 4-connected boolean crop whose top-left pixel is
  (row0, col0): the union of its rows' horizontal runs as boxes, collinear vertices dropped."""
  padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
  step = np.diff(padded, axis=1)
  rows, starts = np.nonzero(step == 1)  # row-major order, so starts and ends pair up
  _, ends = np.nonzero(step == -1)
  boxes = shapely.box(starts + col0, rows + row0, ends + col0, rows + row0 + 1)
  geom = shapely.union_all(boxes).simplify(0)
  if not shapely.is_valid(geom):
    geom = shapely.make_valid(geom)
  if geom.geom_type == 'GeometryCollection':  # make_valid may add stray lines: keep areas
    geom = shapely.union_all([g for g in geom.geoms if g.area > 0])
  return shapely.orient_polygons(geom)


def _components(binary):
  """(component labels, count, bounding slices) of a boolean [H, W] map, 4-connectivity."""
  comp, n = ndimage.label(binary)
  return comp, n, ndimage.find_objects(comp)


def mask_polygons(binary) -> list:
  """One shapely Polygon (MultiPolygon only if needed for validity) per 4-connected component
  of `binary`, traced along pixel edges; holes such as gland lumens are interior rings."""
  binary = np.asarray(binary).astype(bool)
  comp, _, slices = _components(binary)
  return [_component_geometry(comp[sl] == i + 1, sl[0].start, sl[1].start)
          for i, sl in enumerate(slices)]


def _plain(coords):
  """GeoJSON coordinates as nested lists of Python numbers (ints where exact)."""
  if isinstance(coords, (list, tuple)):
    return [_plain(c) for c in coords]
  value = float(coords)
  return int(value) if value.is_integer() else value


def _check_probs(probs, shape, num_classes):
  """probs as a float [H, W, >= num_classes] array matching the labels, or None."""
  if probs is None:
    return None
  probs = np.asarray(probs)
  if probs.ndim != 3 or probs.shape[:2] != tuple(shape) or probs.shape[2] < num_classes:
    raise ValueError(f'probs must be [H, W, C] = {tuple(shape)} + ({num_classes},), got '
                     f'{probs.shape}')
  return probs


def features(labels, class_names, *, object_type, probs=None, microns_per_pixel=None,
             skip_background=True) -> dict:
  """A GeoJSON FeatureCollection in QuPath's (0.4+) import format: one Feature per object
  (4-connected component of a class) with its pixel-edge polygon, objectType, classification
  {name, color} and measurements {'Area px^2', 'Area µm^2' (given microns_per_pixel),
  'Mean probability' (given probs [H, W, C])}. object_type: 'annotation' (editable, few large
  objects such as glands) or 'detection' (lightweight, many small objects such as nuclei)."""
  if object_type not in OBJECT_TYPES:
    raise ValueError(f'object_type must be one of {OBJECT_TYPES}, got {object_type!r}')
  labels = _check_labels(labels, len(class_names), 'features')
  probs = _check_probs(probs, labels.shape, len(class_names))
  colours = class_colours(len(class_names))
  out = []
  for k in range(1 if skip_background else 0, len(class_names)):
    comp, _, slices = _components(labels == k)
    for i, sl in enumerate(slices):
      mask = comp[sl] == i + 1
      geom = _component_geometry(mask, sl[0].start, sl[1].start)
      area = float(mask.sum())
      measurements = {'Area px^2': area}
      if microns_per_pixel is not None:
        measurements['Area µm^2'] = area * float(microns_per_pixel) ** 2
      if probs is not None:
        measurements['Mean probability'] = float(probs[sl][..., k][mask].mean())
      out.append({
          'type': 'Feature',
          'id': str(uuid.uuid4()),
          'geometry': {'type': geom.geom_type,
                       'coordinates': _plain(shapely.geometry.mapping(geom)['coordinates'])},
          'properties': {
              'objectType': object_type,
              'classification': {'name': class_names[k], 'color': list(colours[k])},
              'measurements': measurements,
          },
      })
  return {'type': 'FeatureCollection', 'features': out}


def write_geojson(fc, path):
  """Writes a FeatureCollection as UTF-8 JSON (µ kept as is), for QuPath's File > Import."""
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(fc, f, ensure_ascii=False)


def rasterize(fc, shape, class_names) -> np.ndarray:
  """The inverse of `features`: an int32 [H, W] label map with each feature's polygon(s)
  filled with its class index (by classification name), sampling pixel centres (c+0.5,
  r+0.5); later features overwrite earlier ones, uncovered pixels are 0."""
  index = {name: i for i, name in enumerate(class_names)}
  height, width = shape
  out = np.zeros((height, width), np.int32)
  for feature in fc['features']:
    name = (feature.get('properties', {}).get('classification') or {}).get('name')
    if name not in index:
      raise ValueError(f'rasterize: unknown class name {name!r} (known: {list(class_names)})')
    geom = shapely.geometry.shape(feature['geometry'])
    box, inside = annotations.polygon_pixels(geom, (height, width))
    out[box][inside] = index[name]
  return out


def centroids_csv(labels, class_names, path, probs=None, microns_per_pixel=None):
  """Writes one row per object (4-connected component of a foreground class):
  x,y,class,area_px,mean_probability (x, y: centroid in pixel coordinates, pixel (r, c)'s
  centre at (c+0.5, r+0.5); mean_probability empty without probs), plus area_um2 when
  microns_per_pixel is given. Returns the number of rows (objects)."""
  labels = _check_labels(labels, len(class_names), str(path))
  probs = _check_probs(probs, labels.shape, len(class_names))
  header = ['x', 'y', 'class', 'area_px', 'mean_probability']
  if microns_per_pixel is not None:
    header.append('area_um2')
  rows = []
  for k in range(1, len(class_names)):
    comp, n, _ = _components(labels == k)
    if not n:
      continue
    ids = np.arange(1, n + 1)
    centres = ndimage.center_of_mass(np.ones(comp.shape), comp, ids)
    areas = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    means = (ndimage.mean(probs[..., k], comp, ids) if probs is not None else [None] * n)
    for (r, c), area, mean in zip(centres, areas, means):
      row = [float(c) + 0.5, float(r) + 0.5, class_names[k], int(area),
             '' if mean is None else float(mean)]
      if microns_per_pixel is not None:
        row.append(int(area) * float(microns_per_pixel) ** 2)
      rows.append(row)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return len(rows)
