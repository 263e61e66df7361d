"""Polygon annotations as label masks and instance maps: QuPath GeoJSON and Aperio ImageScope
XML, as `DIR/annotations/<stem>.geojson|.json|.xml` beside `DIR/images/<stem>.<ext>`.

- QuPath (File > Export objects as GeoJSON): a FeatureCollection, or the plain list of
  features older QuPath versions write, of Polygon / MultiPolygon features; a region's class
  is its `classification.name`, else its `name`. Points and lines are ignored.
- ImageScope XML: `<Annotations><Annotation Name=..><Regions><Region Text=.. NegativeROA=..>
  <Vertices><Vertex X=.. Y=../>`; a region's class is its `Text`, else its annotation's `Name`.
  Negative regions (NegativeROA="1") are holes cut out of what lies under them.

Classes: `classes` (config key data.classes) names the foreground classes in label order
(1, 2, ...; background 0), matched case-insensitively; a region named otherwise is an error
naming the file and the name. Without `classes` every region is foreground 1. Pixels are
inside a polygon when their centre (c + 0.5, r + 0.5) is; later regions paint over earlier
ones; each region is one instance.
"""
import json
import pathlib
import xml.etree.ElementTree as ET

import numpy as np
import shapely
import shapely.affinity

from histojax.data import paths

SUFFIXES = ('.geojson', '.json', '.xml')


def read_regions(path) -> list[tuple[str, object, bool]]:
  """[(class name, shapely polygon(s), is a hole)] in file order."""
  path = pathlib.Path(path)
  try:
    if path.suffix.lower() == '.xml':
      return _imagescope(path)
    return _qupath(path)
  except paths.DataError:
    raise
  except (OSError, ValueError, KeyError, TypeError, ET.ParseError,
          shapely.errors.GEOSException) as e:
    raise paths.DataError(f'Annotation file {path} is unreadable: {type(e).__name__}: {e}'
                          ) from e


def _qupath(path):
  data = json.loads(path.read_text(encoding='utf-8-sig'))
  features = data['features'] if isinstance(data, dict) and 'features' in data else data
  if isinstance(features, dict):  # a single Feature
    features = [features]
  regions = []
  for feature in features:
    geometry = feature.get('geometry') or {}
    if geometry.get('type') not in ('Polygon', 'MultiPolygon'):
      continue
    props = feature.get('properties') or {}
    name = (props.get('classification') or {}).get('name') or props.get('name') or ''
    regions.append((str(name), shapely.geometry.shape(geometry), False))
  return regions


def _imagescope(path):
  root = ET.parse(path).getroot()
  regions = []
  for annotation in root.iter('Annotation'):
    for region in annotation.iter('Region'):
      xy = [(float(v.get('X')), float(v.get('Y'))) for v in region.iter('Vertex')]
      if len(xy) < 3:
        continue
      name = region.get('Text') or annotation.get('Name') or ''
      polygon = shapely.make_valid(shapely.Polygon(xy))
      regions.append((name, polygon, region.get('NegativeROA', '0') == '1'))
  return regions


def polygon_pixels(geom, shape):
  """(bounding-box slices, bool mask within them) of the pixels of an [H, W] image whose
  centre (c + 0.5, r + 0.5) lies inside `geom`; an empty mask when none can."""
  height, width = shape
  if geom.is_empty:
    return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
  minx, miny, maxx, maxy = geom.bounds
  r0, r1 = max(int(np.floor(miny)), 0), max(min(int(np.ceil(maxy)), height), 0)
  c0, c1 = max(int(np.floor(minx)), 0), max(min(int(np.ceil(maxx)), width), 0)
  r1, c1 = max(r1, r0), max(c1, c0)
  shapely.prepare(geom)
  yy, xx = np.mgrid[r0:r1, c0:c1]
  return (slice(r0, r1), slice(c0, c1)), shapely.contains_xy(geom, xx + 0.5, yy + 0.5)


def region_labels(regions, classes=None, where='annotations') -> list[int]:
  """Each region's label: 0 for a hole, else its class's place in `classes` (1-based; 1 for
  every region without `classes`); a class `classes` does not name is an error."""
  index = {c.lower(): i + 1 for i, c in enumerate(classes or ())}
  out = []
  for n, (name, _, hole) in enumerate(regions, start=1):
    if not hole and index and name.lower() not in index:
      raise paths.DataError(f'{where}: region {n} has class {name!r}, which data.classes '
                            f'{list(classes)} does not name (config key: data.classes).')
    out.append(0 if hole else index.get(name.lower(), 1))
  return out


def rasterize(regions, shape, classes=None, where='annotations', origin=(0.0, 0.0),
              factor=1.0, only=None, labels_of=None):
  """(int32 labels [H, W], int32 instances [H, W]) of `regions` (instance n: the n-th region
  of the file, 1-based). The window's pixel (r, c) covers the file's coordinates
  origin + factor * (c, r): origin (x, y) and factor (file px per window px) cut and scale a
  slide's level-0 polygons to a region read at a coarser pixel size. `only`: the indices of
  the regions that can touch the window (all when None), drawn in file order; `labels_of`:
  region_labels(regions, classes) when the caller has it (a slide cuts many windows)."""
  if labels_of is None:
    labels_of = region_labels(regions, classes, where)
  x0, y0 = origin
  to_window = [1 / factor, 0, 0, 1 / factor, -x0 / factor, -y0 / factor]
  labels = np.zeros(shape, np.int32)
  instances = np.zeros(shape, np.int32)
  for i in (range(len(regions)) if only is None else sorted(only)):
    geom, hole = regions[i][1], regions[i][2]
    if (x0, y0, factor) != (0.0, 0.0, 1.0):
      geom = shapely.affinity.affine_transform(geom, to_window)
    box, inside = polygon_pixels(geom, shape)
    labels[box][inside] = labels_of[i]
    instances[box][inside] = 0 if hole else i + 1
  return labels, instances


def load(path, shape, classes=None):
  """The label mask and instance map of one annotation file for an image of `shape`."""
  return rasterize(read_regions(path), shape, classes, where=str(path))
