"""histojax/export.py: palette PNG, classes.json, pixel-edge polygons (GeoJSON for QuPath) and
their exact inverse, centroid CSV."""
import csv
import json
import time

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import shapely
import shapely.geometry

from conftest import require_data
from histojax import export

NAMES = ['background', 'tumour', 'stroma', 'necrosis']


def _blobs(shape=(128, 160), seed=0):
  """Seeded multi-class blobs: smoothed noise cut into background + 3 classes."""
  noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
  return np.digitize(noise, np.quantile(noise, [0.4, 0.6, 0.8])).astype(np.int64)


def _checkerboard():
  labels = np.zeros((12, 14), np.int64)
  labels[2:10, 3:11] = (np.indices((8, 8)).sum(0) % 2) + 1  # classes 1 and 2 alternating
  return labels


def _one_pixels():
  labels = np.zeros((9, 9), np.int64)
  labels[1, 1], labels[4, 6], labels[7, 3] = 1, 2, 3
  return labels


def _border():
  labels = np.zeros((20, 30), np.int64)
  labels[0:5, 0:7] = 1  # top-left corner
  labels[10:20, 25:30] = 2  # bottom-right corner
  labels[:, 12:14] = 3  # spans top to bottom
  labels[19, 0] = 1  # single bottom-left pixel
  return labels


def _diagonal_pair():
  labels = np.zeros((6, 6), np.int64)
  labels[2, 2] = labels[3, 3] = 1
  return labels


def _n_objects(labels, classes):
  return sum(ndimage.label(labels == k)[1] for k in classes)


def test_class_colours_okabe_ito_and_cycle():
  colours = export.class_colours(10)
  assert colours[0] == (0, 0, 0)
  assert colours[1:3] == [(230, 159, 0), (86, 180, 233)]
  assert colours[7] == (204, 121, 167)
  assert colours[8] == colours[1] and colours[9] == colours[2]


def test_label_png_decodes_to_labels_with_palette(tmp_path):
  labels = _blobs()
  path = tmp_path / 'mask.png'
  export.save_label_png(labels, path, len(NAMES))
  image = Image.open(path)
  assert image.mode == 'P'
  np.testing.assert_array_equal(np.asarray(image), labels)
  palette = image.getpalette()[:3 * len(NAMES)]
  assert [tuple(palette[i:i + 3]) for i in range(0, len(palette), 3)] == export.class_colours(4)


def test_label_png_out_of_range_names_path(tmp_path):
  with pytest.raises(ValueError, match='bad.png'):
    export.save_label_png(np.full((3, 3), 4), tmp_path / 'bad.png', 4)


def test_classes_json_round_trip(tmp_path):
  path = tmp_path / 'classes.json'
  entries = export.classes_json(NAMES, path)
  assert json.loads(path.read_text(encoding='utf-8')) == entries
  assert entries[1] == {'index': 1, 'name': 'tumour', 'color': [230, 159, 0], 'hex': '#e69f00'}
  assert [e['name'] for e in entries] == NAMES


def test_gland_with_lumen_is_one_polygon_with_a_hole():
  yy, xx = np.mgrid[:60, :70]
  dist = np.hypot(yy - 30, xx - 35)
  gland = (dist <= 20) & (dist > 8)
  polys = export.mask_polygons(gland)
  assert len(polys) == 1
  poly = polys[0]
  assert poly.geom_type == 'Polygon' and len(poly.interiors) == 1
  assert shapely.is_valid(poly)
  assert poly.area == gland.sum()
  assert poly.bounds == (xx[gland].min(), yy[gland].min(), xx[gland].max() + 1,
                         yy[gland].max() + 1)


def test_polygons_follow_pixel_edges_without_collinear_vertices():
  mask = np.zeros((5, 6), bool)
  mask[1:4, 2:5] = True  # a 3x3 square: x in [2, 5], y in [1, 4]
  (poly,) = export.mask_polygons(mask)
  assert sorted(set(poly.exterior.coords)) == [(2, 1), (2, 4), (5, 1), (5, 4)]


@pytest.mark.parametrize('make', [_blobs, _diagonal_pair, _checkerboard, _one_pixels, _border])
def test_rasterize_inverts_features(make):
  labels = make()
  fc = export.features(labels, NAMES, object_type='annotation')
  assert len(fc['features']) == _n_objects(labels, range(1, 4))
  back = export.rasterize(fc, labels.shape, NAMES)
  assert back.dtype == np.int32
  fg = (labels > 0) | (back > 0)
  iou = ((labels == back) & fg).sum() / fg.sum()
  assert iou >= 0.99
  np.testing.assert_array_equal(back, labels)
  for feature in fc['features']:
    geom = shapely.geometry.shape(feature['geometry'])
    assert shapely.is_valid(geom)
    assert geom.area == feature['properties']['measurements']['Area px^2']


def test_diagonal_pixels_are_two_objects():
  fc = export.features(_diagonal_pair(), NAMES, object_type='detection')
  assert [f['properties']['measurements']['Area px^2'] for f in fc['features']] == [1.0, 1.0]


def test_feature_properties_and_json(tmp_path):
  labels = _blobs()
  fc = export.features(labels, NAMES, object_type='detection')
  ids = set()
  for feature in fc['features']:
    assert feature['type'] == 'Feature'
    ids.add(feature['id'])
    props = feature['properties']
    assert props['objectType'] == 'detection'
    name = props['classification']['name']
    assert props['classification']['color'] == list(
        export.class_colours(4)[NAMES.index(name)])
    assert list(props['measurements']) == ['Area px^2']
    for ring in feature['geometry']['coordinates'] if feature['geometry']['type'] == 'Polygon' \
        else [r for p in feature['geometry']['coordinates'] for r in p]:
      assert ring[0] == ring[-1]
  assert len(ids) == len(fc['features'])
  assert {f['properties']['classification']['name'] for f in fc['features']} == set(NAMES[1:])
  text = json.dumps(fc)  # no numpy types anywhere
  assert json.loads(text) == fc
  path = tmp_path / 'objects.geojson'
  export.write_geojson(export.features(labels, NAMES, object_type='annotation',
                                       microns_per_pixel=0.5), path)
  assert 'µm^2' in path.read_text(encoding='utf-8')


def test_background_objects_when_not_skipped():
  labels = _border()
  fc = export.features(labels, NAMES, object_type='annotation', skip_background=False)
  assert len(fc['features']) == _n_objects(labels, range(4))
  names = [f['properties']['classification']['name'] for f in fc['features']]
  assert 'background' in names


def test_micron_area_and_mean_probability():
  labels = np.zeros((10, 12), np.int64)
  labels[1:4, 1:5] = 1  # 12 px
  labels[6:9, 7:9] = 2  # 6 px
  probs = np.zeros((10, 12, 4), np.float32)
  probs[..., 1] = np.arange(120).reshape(10, 12) / 120
  probs[6:9, 7:9, 2] = 0.75
  mpp = 0.25
  with_all = export.features(labels, NAMES, object_type='annotation', probs=probs,
                             microns_per_pixel=mpp)
  m1, m2 = (f['properties']['measurements'] for f in with_all['features'])
  assert m1['Area px^2'] == 12 and m2['Area px^2'] == 6
  assert m1['Area µm^2'] == pytest.approx(12 * mpp ** 2)
  assert m2['Area µm^2'] == pytest.approx(6 * mpp ** 2)
  assert m1['Mean probability'] == pytest.approx(probs[1:4, 1:5, 1].mean())
  assert m2['Mean probability'] == pytest.approx(0.75)
  assert all(isinstance(v, float) for v in (*m1.values(), *m2.values()))
  plain = export.features(labels, NAMES, object_type='annotation')
  assert all(list(f['properties']['measurements']) == ['Area px^2'] for f in plain['features'])


def test_invalid_inputs_raise():
  labels = _one_pixels()
  with pytest.raises(ValueError, match='object_type'):
    export.features(labels, NAMES, object_type='cell')
  fc = export.features(labels, NAMES, object_type='annotation')
  with pytest.raises(ValueError, match='stroma'):
    export.rasterize(fc, labels.shape, ['background', 'tumour', 'necrosis', 'x'])
  with pytest.raises(ValueError, match='probs'):
    export.features(labels, NAMES, object_type='annotation', probs=np.zeros((9, 9, 2)))


def test_centroids_csv_known_square(tmp_path):
  labels = np.zeros((20, 20), np.int64)
  labels[4:8, 10:16] = 2  # rows 4..7, cols 10..15: centre x = 13, y = 6
  labels[15, 3] = 1  # one pixel: centre (3.5, 15.5)
  probs = np.zeros((20, 20, 4))
  probs[4:8, 10:16, 2] = 0.6
  probs[15, 3, 1] = 0.9
  path = tmp_path / 'centroids.csv'
  assert export.centroids_csv(labels, NAMES, path, probs=probs) == 2
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['x', 'y', 'class', 'area_px', 'mean_probability']
  got = {r[2]: r for r in rows[1:]}
  assert [float(v) for v in got['stroma'][:2]] == [13.0, 6.0]
  assert got['stroma'][3] == '24' and float(got['stroma'][4]) == pytest.approx(0.6)
  assert [float(v) for v in got['tumour'][:2]] == [3.5, 15.5]
  assert got['tumour'][3] == '1' and float(got['tumour'][4]) == pytest.approx(0.9)
  assert export.centroids_csv(labels, NAMES, path, microns_per_pixel=0.5) == 2
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows[0][-1] == 'area_um2' and rows[1][4] == ''
  assert float({r[2]: r for r in rows[1:]}['stroma'][5]) == pytest.approx(24 * 0.25)


def test_glas_mask_round_trip():
  root = require_data('glas')
  paths = sorted(root.glob('*_anno.png'))
  assert paths, f'no *_anno.png under {root}'
  binary = (np.asarray(Image.open(paths[0])) > 0).astype(np.int64)
  names = ['background', 'gland']
  start = time.perf_counter()
  fc = export.features(binary, names, object_type='annotation')
  traced = time.perf_counter() - start
  back = export.rasterize(fc, binary.shape, names)
  total = time.perf_counter() - start
  print(f'{paths[0].name} {binary.shape}: {len(fc["features"])} glands, features {traced:.3f} s,'
        f' +rasterize {total:.3f} s')
  fg = (binary > 0) | (back > 0)
  assert ((binary == back) & fg).sum() / fg.sum() >= 0.99
  assert len(fc['features']) == ndimage.label(binary)[1]
  assert all(shapely.is_valid(shapely.geometry.shape(f['geometry'])) for f in fc['features'])
