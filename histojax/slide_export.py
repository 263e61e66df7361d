"""Whole-slide outputs, written while the prediction streams: a tiled pyramidal label TIFF and
GeoJSON objects merged across tile edges. Memory stays bounded by a tile (plus the objects
that touch tile edges, which wait to be merged) however large the slide.

Label TIFF: level 0 arrives tile by tile in row-major order and goes to a temporary tiled TIFF;
`finish` then builds each coarser level (every second pixel: labels are never averaged) from
the one before, tile by tile through zarr, and writes the final file: uint8 class indices,
512 px zlib tiles, each level a top-level page with resolution tags, which OpenSlide reads as
a pyramid and QuPath opens (its pixel values are the classes of DIR/classes.json).

GeoJSON: objects wholly inside a tile are written at once; pieces that touch an inner tile
edge are kept and, at the end, united per class (pieces of one object share an edge, so the
union joins them; distinct objects are not 4-connected and stay apart).
"""
import json
import pathlib
import uuid

import numpy as np
import shapely
from scipy import ndimage
import tifffile

from histojax import export

PYRAMID_TILE = 512


def _tile_blocks(array, shape, tile):
  """Yields `array`'s tile x tile blocks (zero-padded at the edges) in row-major order."""
  height, width = shape
  for y in range(0, height, tile):
    for x in range(0, width, tile):
      block = np.asarray(array[y:min(y + tile, height), x:min(x + tile, width)], np.uint8)
      if block.shape != (tile, tile):
        block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
      yield block


def _halved_blocks(source, shape, tile):
  """Yields the tiles of `source` [H, W] (zarr or array) halved: every second pixel."""
  height, width = shape
  for y in range(0, -(-height // 2), tile):
    for x in range(0, -(-width // 2), tile):
      block = np.asarray(source[2 * y:min(2 * (y + tile), height),
                                2 * x:min(2 * (x + tile), width)], np.uint8)[::2, ::2]
      yield np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))


def _open_level(path):
  import zarr  # pylint: disable=g-import-not-at-top
  tif = tifffile.TiffFile(path)
  return tif, zarr.open(tif.series[0].aszarr(), mode='r')


def _resolution(mpp):
  per_cm = 1e4 / mpp
  return dict(resolution=(per_cm, per_cm), resolutionunit='CENTIMETER')


def write_level(path, blocks, shape, tile, mpp):
  """One tiled uint8 TIFF page from `blocks` (row-major tile x tile arrays, e.g. a generator
  that predicts as it goes)."""
  with tifffile.TiffWriter(path, bigtiff=True) as tif:
    tif.write(blocks, shape=tuple(shape), dtype=np.uint8, tile=(tile, tile),
              compression='zlib', photometric='minisblack', metadata=None, **_resolution(mpp))


def build_pyramid(level0_path, out_path, shape, mpp, tile=PYRAMID_TILE):
  """The final pyramidal TIFF from the temporary level-0 TIFF: levels halve until the longer
  side fits one tile; each level's temporary file is made from the one before. Temporary
  files sit beside `out_path` and are removed."""
  out_path = pathlib.Path(out_path)
  levels = [(pathlib.Path(level0_path), tuple(shape), mpp)]
  try:
    while max(levels[-1][1]) > tile:
      src_path, (h, w), level_mpp = levels[-1]
      dst = out_path.with_name(f'{out_path.name}.level{len(levels)}.tmp')
      levels.append((dst, (-(-h // 2), -(-w // 2)), level_mpp * 2))  # removed however it ends
      tif, source = _open_level(src_path)
      with tif:
        write_level(dst, _halved_blocks(source, (h, w), tile), levels[-1][1], tile,
                    level_mpp * 2)
    with tifffile.TiffWriter(out_path, bigtiff=True) as out:
      for i, (src_path, level_shape, level_mpp) in enumerate(levels):
        tif, source = _open_level(src_path)
        with tif:
          out.write(_tile_blocks(source, level_shape, tile), shape=level_shape, dtype=np.uint8,
                    tile=(tile, tile), compression='zlib', photometric='minisblack',
                    subfiletype=1 if i else 0, metadata=None, **_resolution(level_mpp))
  finally:
    for path, _, _ in levels[1:]:
      path.unlink(missing_ok=True)


class ObjectStitcher:
  """GeoJSON objects of a label map that arrives tile by tile, streamed to `path`.

  Coordinates are written in the slide's level-0 pixels (label px x `scale`), so QuPath
  overlays them on the slide; 'Area µm^2' uses `label_mpp`. Objects (merged) smaller than
  `min_size` label px are dropped. `add` returns nothing; `finish` merges the edge pieces,
  closes the file and returns {class name: (count, area µm²)}.
  """

  def __init__(self, path, class_names, *, object_type, scale, label_mpp, min_size=0):
    self.class_names, self.object_type = list(class_names), object_type
    self.scale, self.label_mpp, self.min_size = float(scale), float(label_mpp), int(min_size)
    self.colours = export.class_colours(len(class_names))
    self.pieces = {k: [] for k in range(1, len(class_names))}  # (geometry, area, prob sum)
    self.totals = {name: [0, 0.0] for name in self.class_names[1:]}
    self.file = open(path, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
    self.file.write('{"type": "FeatureCollection", "features": [\n')
    self.first = True
    self.has_probs = False

  def add(self, labels, probs, row0, col0, inner_edges):
    """Objects of one tile: `labels` [h, w] at label-map position (row0, col0), `probs`
    [h, w, C] or None; inner_edges = (top, bottom, left, right): which sides border another
    tile (an object touching one may continue there)."""
    top, bottom, left, right = inner_edges
    self.has_probs = self.has_probs or probs is not None
    height, width = labels.shape
    for k in self.pieces:
      comp, n = ndimage.label(labels == k)
      if not n:
        continue
      index = np.arange(1, n + 1)
      areas = ndimage.sum_labels(np.ones_like(comp), comp, index)
      sums = (ndimage.sum_labels(probs[..., k], comp, index) if probs is not None
              else np.zeros(n))
      for i, sl in enumerate(ndimage.find_objects(comp)):
        geom = export._component_geometry(comp[sl] == i + 1, row0 + sl[0].start,  # pylint: disable=protected-access
                                          col0 + sl[1].start)
        cut = ((top and sl[0].start == 0) or (bottom and sl[0].stop == height) or
               (left and sl[1].start == 0) or (right and sl[1].stop == width))
        if cut:
          self.pieces[k].append((geom, float(areas[i]), float(sums[i])))
        else:
          self._write(k, geom, float(areas[i]), float(sums[i]) if probs is not None else None)

  def _write(self, k, geom, area, prob_sum):
    if area < self.min_size:
      return
    measurements = {'Area px^2': area * self.scale**2,
                    'Area µm^2': area * self.label_mpp**2}
    if prob_sum is not None:
      measurements['Mean probability'] = prob_sum / area
    geom = shapely.transform(geom, lambda xy: xy * self.scale)
    feature = {
        'type': 'Feature', 'id': str(uuid.uuid4()),
        'geometry': {'type': geom.geom_type,
                     'coordinates': export._plain(shapely.geometry.mapping(geom)['coordinates'])},  # pylint: disable=protected-access
        'properties': {'objectType': self.object_type,
                       'classification': {'name': self.class_names[k],
                                          'color': list(self.colours[k])},
                       'measurements': measurements}}
    self.file.write(('' if self.first else ',\n') + json.dumps(feature, ensure_ascii=False))
    self.first = False
    total = self.totals[self.class_names[k]]
    total[0] += 1
    total[1] += measurements['Area µm^2']

  def finish(self):
    """Merges the pieces cut by tile edges, writes them, closes the file."""
    for k, pieces in self.pieces.items():
      if not pieces:
        continue
      geoms = [g for g, _, _ in pieces]
      merged = shapely.union_all(geoms)
      parts = list(getattr(merged, 'geoms', [merged]))
      tree = shapely.STRtree(parts)
      area, prob = np.zeros(len(parts)), np.zeros(len(parts))
      for geom, piece_area, piece_prob in pieces:
        point = geom.representative_point()
        hits = tree.query(point, predicate='intersects')
        owner = int(hits[0]) if len(hits) else int(tree.nearest(point))
        area[owner] += piece_area
        prob[owner] += piece_prob
      for i, part in enumerate(parts):
        self._write(k, shapely.orient_polygons(part), float(area[i]),
                    float(prob[i]) if self.has_probs else None)
    self.file.write('\n]}\n')
    self.file.close()
    return {name: tuple(v) for name, v in self.totals.items()}

  def close(self):
    if not self.file.closed:
      self.file.close()
