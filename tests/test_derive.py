"""histojax/data/derive.py: tiles, tissue filter, nucleus crops, disc and type masks."""
import numpy as np
import pytest

from conftest import crc_records, glas_records, require_data
from histojax.data import derive, paths
from histojax.data.sources import crchisto, glas


_glas, _crc = glas_records, crc_records


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- tiles -----------------------------------------------------------------------------------

def test_tile_grid_shapes_and_content():
  image = _image(250, 330)
  mask = np.arange(250 * 330).reshape(250, 330)
  t = derive.tile_image(image, 100, mask=mask, source='im1', patient='p7')
  assert t['image'].shape == (6, 100, 100, 3) and t['mask'].shape == (6, 100, 100)
  assert t['origin'].tolist() == [[0, 0], [0, 100], [0, 200], [100, 0], [100, 100], [100, 200]]
  np.testing.assert_array_equal(t['image'][4], image[100:200, 100:200])
  np.testing.assert_array_equal(t['mask'][5], mask[100:200, 200:300])
  assert set(t['source']) == {'im1'} and set(t['patient']) == {'p7'}
  assert len(derive.tile_image(image, 100, 50)['image']) == 4 * 5
  edges = derive.tile_image(image, 100, cover_edges=True)
  assert len(edges['image']) == 3 * 4 and edges['origin'][-1].tolist() == [150, 230]
  assert len(derive.tile_image(image[:50], 100)['image']) == 0
  with pytest.raises(paths.DataError, match='differ in size'):
    derive.tile_image(image, 100, mask=mask[:10])


def test_tissue_filter_drops_background():
  image = np.full((100, 400, 3), 245, np.uint8)  # white glass
  image[:, :200] = (200, 80, 160)  # stained tissue on the left half
  sat, _ = derive.tissue_mask(image)
  assert sat[:, :200].all() and not sat[:, 200:].any()
  t = derive.tile_image(image, 100, min_tissue=0.5)
  assert t['origin'][:, 1].tolist() == [0, 100]
  np.testing.assert_allclose(t['tissue'], 1.0)
  # A fixed threshold from args overrides Otsu: above every saturation -> no tissue.
  assert len(derive.tile_image(image, 100, min_tissue=0.5, saturation_threshold=0.99)['image']) == 0


def test_otsu_separates_two_modes():
  values = np.concatenate([np.full(100, 0.1), np.full(300, 0.7)])
  t = derive.otsu_threshold(values)
  assert 0.1 <= t < 0.7


def test_glas_tiles_real_image():
  require_data('glas')
  r = next(r for r in _glas() if r.split == 'testB')
  t = derive.tile_image(glas.load_image(r), 100, mask=glas.load_mask(r, instances=False),
                        source=r.name, patient=r.patient)
  assert t['image'].shape == ((r.height // 100) * (r.width // 100), 100, 100, 3)
  assert t['mask'].shape == t['image'].shape[:3]
  assert set(t['patient']) == {r.patient} and 0 <= t['tissue'].min() <= t['tissue'].max() <= 1


# ---- nucleus-centred crops -------------------------------------------------------------------

def test_point_crops_centre_and_reflect_padding():
  image = _image(40, 50)
  out = derive.point_crops(image, [(0.2, 0.4), (49.0, 39.0), (20.0, 10.0)], [1, 2, 3], size=9)
  crops = out['image']
  assert crops.shape == (3, 9, 9, 3) and out['label'].tolist() == [1, 2, 3]
  c = 4
  # Top-left corner: centre is pixel (0, 0); the pad mirrors without repeating the edge pixel.
  np.testing.assert_array_equal(crops[0, c, c], image[0, 0])
  np.testing.assert_array_equal(crops[0, c - 1, c], image[1, 0])
  np.testing.assert_array_equal(crops[0, c, c - 3], image[0, 3])
  np.testing.assert_array_equal(crops[0, c - 2, c - 2], image[2, 2])
  # Bottom-right corner.
  np.testing.assert_array_equal(crops[1, c, c], image[39, 49])
  np.testing.assert_array_equal(crops[1, c + 1, c + 2], image[38, 47])
  # Interior: a plain slice.
  np.testing.assert_array_equal(crops[2], image[6:15, 16:25])
  assert out['center'].tolist() == [[0, 0], [49, 39], [20, 10]]
  even = derive.point_crops(image, [(20.0, 10.0)], size=8)['image'][0]
  np.testing.assert_array_equal(even, image[6:14, 16:24])


def test_crchisto_crops_real():
  require_data('crchistophenotypes')
  r = _crc()[0]
  points, labels, _ = crchisto.nuclei(r)
  out = derive.point_crops(crchisto.load_image(r), points, labels, size=27)
  assert out['image'].shape == (len(points), 27, 27, 3)
  assert (out['label'] >= -1).all()


# ---- point -> disc masks ---------------------------------------------------------------------

def test_disc_mask_area_and_overlap_rule():
  mask = derive.points_to_binary_mask([(10.0, 10.0)], (21, 21), radius=3)
  assert mask.sum() == 29  # lattice points with dx^2 + dy^2 <= 9
  assert mask[10, 13] == 1 and mask[10, 14] == 0 and mask[12, 12] == 1 and mask[12, 13] == 0
  inst = derive.disc_owner([(10.0, 10.0), (14.0, 10.0)], (21, 21), radius=3) + 1
  assert inst[10, 11] == 1 and inst[10, 13] == 2
  assert inst[10, 12] == 1  # equidistant: the lower point index wins
  swapped = derive.disc_owner([(14.0, 10.0), (10.0, 10.0)], (21, 21), radius=3) + 1
  assert swapped[10, 12] == 1 and swapped[10, 11] == 2
  # Discs crossing the border are clipped, not wrapped.
  edge = derive.points_to_binary_mask([(0.0, 0.0)], (10, 10), radius=2)
  assert edge.sum() == 6 and edge[-1, -1] == 0


def test_type_map_classes_and_merge():
  points = [(5.0, 5.0), (15.0, 5.0), (25.0, 5.0), (35.0, 5.0)]
  classes = ['epithelial', 'inflammatory', 'fibroblast', 'others']
  tmap, names = derive.points_to_type_map(points, ['fibroblast', 'epithelial', None, 'others'],
                                          (11, 41), classes, radius=2)
  assert names == classes
  assert [tmap[5, x] for x in (5, 15, 25, 35)] == [3, 1, 0, 4]
  merged, names = derive.points_to_type_map(
      points, [2, 0, 1, 3], (11, 41), classes, radius=2,
      merge={'fibroblast': 'stroma', 'others': 'stroma', 'inflammatory': None})
  assert names == ['epithelial', 'stroma']
  assert [merged[5, x] for x in (5, 15, 25, 35)] == [2, 1, 0, 2]
  with pytest.raises(paths.DataError, match="Unknown class name 'tumour'"):
    derive.points_to_type_map(points[:1], ['tumour'], (11, 41), classes)
  with pytest.raises(paths.DataError, match='unknown class'):
    derive.merge_classes(classes, {'stroma': 'x'})
  # Untyped nuclei: background by default, or an IGNORE disc that still claims its pixels.
  ignored, _ = derive.points_to_type_map(points, [2, -1, None, 3], (11, 41), classes, radius=2,
                                         untyped=derive.IGNORE)
  assert [ignored[5, x] for x in (5, 15, 25, 35)] == [3, -1, -1, 4]
  assert (ignored == -1).sum() == 2 * (tmap == 1).sum() and ignored[0, 15] == 0


def test_crchisto_type_map_real():
  require_data('crchistophenotypes')
  r = _crc()[1]
  points, labels, _ = crchisto.nuclei(r)
  tmap, names = derive.points_to_type_map(points, labels, (r.height, r.width),
                                          crchisto.CLASSES, radius=3)
  assert tmap.shape == (500, 500) and names == list(crchisto.CLASSES)
  xy = derive.point_pixels(points, r.height, r.width)
  typed = labels >= 0
  # The centre pixel of a nucleus carries its class unless a nearer centre shares that pixel.
  agree = tmap[xy[typed, 1], xy[typed, 0]] == labels[typed] + 1
  assert agree.mean() > 0.98
  assert set(np.unique(tmap)) <= set(range(len(names) + 1))
