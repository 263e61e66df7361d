"""Tests for host-side joint image/mask augmentation."""
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from histojax.data import augment as aug

GEOMETRIC = dict(flip=0.5, rot90=1.0, rotate_deg=180.0, scale=(0.7, 1.4), shear_deg=15.0,
                 elastic_alpha=4.0, elastic_sigma=16.0, distortion=0.15, crop_size=(96, 112))
ALL_ON = dict(aug.default_params(), crop_size=96,
              **{k: 1.0 for k in aug.default_params() if k.startswith('p_')})


def _blocky(h=160, w=200, block=16, seed=0):
  """Image of flat blocks whose red channel is far from 128; mask = red > 128 (labels 2 / 5)."""
  rng = np.random.default_rng(seed)
  cells = rng.integers(0, 2, (h // block + 1, w // block + 1))
  red = np.where(np.kron(cells, np.ones((block, block)))[:h, :w] > 0, 230, 25)
  image = np.stack([red, rng.integers(0, 256, (h, w)), rng.integers(0, 256, (h, w))], -1)
  image = image.astype(np.uint8)
  return image, np.where(image[..., 0] > 128, 5, 2).astype(np.int32)


@pytest.mark.parametrize('index', range(6))
def test_geometric_moves_image_and_mask_together(index):
  image, mask = _blocky()
  params = dict(GEOMETRIC, **{'p_' + k: 1.0 for k in GEOMETRIC})
  out, out_mask = aug.augment(image, mask, params, seed=1, epoch=2, index=index)
  expected = np.where(out[..., 0] > 128, 5, 2)
  assert np.mean(out_mask == expected) >= 0.99


@pytest.mark.parametrize('dtype', [np.uint8, np.int16, np.int32, np.int64])
def test_masks_stay_label_valued(dtype):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
  labels = np.array([0, 3, 7, 100, 255], dtype)
  mask = labels[ndimage.zoom(rng.integers(0, 5, (12, 9)), 10, order=0)]
  for index in range(5):
    _, out = aug.augment(image, mask, ALL_ON, seed=0, epoch=0, index=index)
    assert out.dtype == dtype
    assert set(np.unique(out)) <= set(labels.tolist())


def test_deterministic_in_seed_epoch_index():
  image, mask = _blocky()
  params = aug.default_params()
  run = lambda **kw: aug.augment(image, mask, params, **dict(dict(seed=3, epoch=1, index=7), **kw))
  (a, am), (b, bm) = run(), run()
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(am, bm)
  for change in (dict(index=8), dict(epoch=2), dict(seed=4)):
    assert not np.array_equal(run(**change)[0], a)


@pytest.mark.parametrize('crop', [64, (48, 80), (200, 40)])
def test_shapes_and_dtypes_with_crop(crop):
  image, mask = _blocky(100, 150)
  hw = tuple(np.broadcast_to(crop, 2))
  out, out_mask = aug.augment(image, mask.astype(np.int16), dict(ALL_ON, crop_size=crop),
                              seed=0, epoch=0, index=0)
  assert out.shape == hw + (3,) and out.dtype == np.uint8
  assert out_mask.shape == hw and out_mask.dtype == np.int16
  out, none = aug.augment(image, None, dict(aug.FLIPS_ONLY, crop_size=crop), seed=0, epoch=0,
                          index=0)
  assert none is None and out.shape == hw + (3,) and out.dtype == np.uint8


def test_random_crop_position_varies_and_is_an_exact_window():
  image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  corners = set()
  for index in range(20):
    out, _ = aug.augment(image, None, dict(crop_size=32), seed=0, epoch=0, index=index)
    hits = [(y, x) for y in range(29) for x in range(49)
            if np.array_equal(image[y:y + 32, x:x + 32], out)]
    assert len(hits) == 1  # a plain crop is copied, not interpolated
    corners.add(hits[0])
  assert len(corners) > 10


def test_reflect_padding_leaves_no_constant_border():
  rng = np.random.default_rng(0)
  image = rng.integers(100, 256, (64, 96, 3), dtype=np.uint8)
  params = dict(rotate_deg=(45.0, 45.0), p_rotate_deg=1.0)
  out, _ = aug.augment(image, None, params, seed=0, epoch=0, index=0)
  assert out.min() >= 100  # nothing dark bled in from outside the image
  corner = out[:12, :12].reshape(-1, 3)
  assert corner.std(axis=0).min() > 10  # the corner holds reflected texture, not a fill value


def test_hed_jitter_with_zero_sigma_is_identity():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  image[0, :2] = [[0, 0, 0], [255, 255, 255]]
  params = dict(hed_sigma=1e-12, hed_bias=0.0, p_hed=1.0)
  out, _ = aug.augment(image, None, params, seed=0, epoch=0, index=0)
  assert np.abs(out.astype(int) - image).max() <= 1
  jittered, _ = aug.augment(image, None, dict(params, hed_sigma=0.2), seed=0, epoch=0, index=0)
  assert np.abs(jittered.astype(int) - image).mean() > 2


def test_shear_is_off_by_default():
  assert aug.default_params()['shear_deg'] == 0
  image, mask = _blocky(64, 64)
  # Only shear's probability set: nothing may change.
  out, out_mask = aug.augment(image, mask, dict(p_shear_deg=1.0), seed=0, epoch=0, index=0)
  np.testing.assert_array_equal(out, image)
  np.testing.assert_array_equal(out_mask, mask)
  sheared, _ = aug.augment(image, mask, dict(shear_deg=(20.0, 20.0)), seed=0, epoch=0, index=0)
  assert not np.array_equal(sheared, image)


def test_flips_only_permutes_pixels():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  mask = np.arange(1600, dtype=np.int32).reshape(40, 40)
  for index in range(8):
    out, out_mask = aug.augment(image, mask, aug.FLIPS_ONLY, seed=0, epoch=0, index=index)
    np.testing.assert_array_equal(np.sort(out_mask, axis=None), np.arange(1600))
    np.testing.assert_array_equal(out.reshape(-1, 3), image.reshape(-1, 3)[out_mask.ravel()])


def test_sampler_matches_map_coordinates_reflect():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 57, 3), dtype=np.uint8)
  mask = rng.integers(0, 9, (40, 57)).astype(np.int16)
  sy = rng.uniform(-60, 100, (30, 31)).astype(np.float32)
  sx = rng.uniform(-60, 120, (30, 31)).astype(np.float32)
  out, out_mask = aug._sample(image, mask, sy, sx, exact=False)
  for c in range(3):
    ref = ndimage.map_coordinates(image[..., c].astype(np.float32), [sy, sx], order=1,
                                  mode='reflect')
    np.testing.assert_allclose(out[c].reshape(sy.shape), ref, atol=0.01)
  np.testing.assert_array_equal(out_mask, ndimage.map_coordinates(mask, [sy, sx], order=0,
                                                                 mode='reflect'))


def test_accepts_config_dict_and_photometric_stays_in_range():
  ml_collections = pytest.importorskip('ml_collections')
  image, mask = _blocky()
  params = ml_collections.ConfigDict(ALL_ON)
  out, out_mask = aug.augment(image, mask, params, seed=0, epoch=0, index=0)
  assert out.shape == (96, 96, 3) and out_mask.shape == (96, 96)
  assert 0 < out.std()


def test_hed_jitter_matches_explicit_colour_deconvolution():
  rng = np.random.default_rng(0)
  rgb = rng.uniform(0, 255, (500, 3))
  params = dict(hed_sigma=0.2, hed_bias=0.05)
  out = aug._hed_jitter(np.random.default_rng(5), params, rgb.T.astype(np.float32).copy()).T
  draw = np.random.default_rng(5)
  alpha, beta = 1 + draw.uniform(-1, 1, 3) * 0.2, draw.uniform(-1, 1, 3) * 0.05
  stains = -np.log10((rgb + 1) / 256) @ aug._HED_FROM_RGB  # Ruifrok–Johnston, log10 OD
  expected = 256 * 10 ** -((stains * alpha + beta) @ aug._RGB_FROM_HED) - 1
  np.testing.assert_allclose(out, expected, rtol=1e-3, atol=0.05)


def test_colour_jitter_keeps_grey_grey_under_hue_and_saturation():
  grey = np.full((3, 10), 120.0, np.float32)
  m, t = aug._colour_matrix(np.random.default_rng(0), dict(saturation=0.5, hue=0.3), grey)
  out = m.T @ grey + t[:, None]
  np.testing.assert_allclose(out, grey, atol=0.05)


@pytest.mark.parametrize('index', range(8))
def test_glass_edge_turns_one_side_to_background_and_leaves_the_rest(index):
  image, mask = _blocky()
  params = dict(GEOMETRIC, glass_edge=0.4, p_glass_edge=1.0)
  out, out_mask = aug.augment(image, mask, params, seed=3, epoch=1, index=index)
  plain, plain_mask = aug.augment(image, mask, dict(params, glass_edge=0.0), seed=3, epoch=1,
                                  index=index)
  glass = out_mask == 0  # the blocky mask has no 0: every 0 is glass
  assert glass.any() and not glass.all()
  assert out[glass].min() >= 215 and np.abs(out[glass].astype(int) - out[glass].mean()).max() < 30
  assert np.array_equal(out[~glass], plain[~glass]) and np.array_equal(out_mask[~glass],
                                                                       plain_mask[~glass])
  sides = [glass[0].all(), glass[-1].all(), glass[:, 0].all(), glass[:, -1].all()]
  assert sum(sides) == 1  # one side, whole
  # The band is one piece, its inner edge a curve: at most 40% of the crop deep (x1.5 waves).
  assert ndimage.label(glass)[1] == 1
  depth = glass.sum(axis=0 if sides[0] or sides[1] else 1)
  assert depth.max() <= 0.4 * 1.5 * max(out.shape[:2]) + 1 and depth.std() > 0
  off, _ = aug.augment(image, mask, dict(params, p_glass_edge=0.0), seed=3, epoch=1,
                       index=index)
  assert np.array_equal(off, plain)


@pytest.mark.parametrize('channels', [3, 1])
def test_jpeg_is_a_round_trip_at_a_quality_in_range_and_leaves_the_mask(channels):
  image, mask = _blocky()
  image = np.ascontiguousarray(image[..., :channels])
  params = dict(jpeg_quality=(70, 72), p_jpeg_quality=1.0)
  out, out_mask = aug.augment(image, mask, params, seed=3, epoch=1, index=0)
  assert out.shape == image.shape and out.dtype == np.uint8 and np.array_equal(out_mask, mask)
  assert not np.array_equal(out, image) and out.flags.writeable
  def round_trip(quality):
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if channels == 1 else image).save(
        buffer, format='JPEG', quality=quality, subsampling=2)
    return np.asarray(Image.open(buffer)).reshape(image.shape)
  assert any(np.array_equal(out, round_trip(q)) for q in (70, 71, 72))
  off, _ = aug.augment(image, mask, dict(params, p_jpeg_quality=0.0), seed=3, epoch=1, index=0)
  assert np.array_equal(off, image)


@pytest.mark.parametrize('quality', [(95, 60), (50,), (0, 101), 101])
def test_jpeg_quality_out_of_range_names_the_key(quality):
  image, mask = _blocky()
  with pytest.raises(ValueError, match='data.augment.jpeg_quality'):
    aug.augment(image, mask, dict(jpeg_quality=quality, p_jpeg_quality=0.0), seed=0, epoch=0,
                index=0)


def test_jpeg_keeps_the_other_draws_and_compresses_the_glass_too():
  """JPEG comes last, on its own stream: with it the crop is the one without it, compressed
  (glass band included), pixel for pixel."""
  image, mask = _blocky()
  params = dict(GEOMETRIC, glass_edge=0.4, p_glass_edge=1.0, jpeg_quality=(90, 90),
                p_jpeg_quality=1.0)
  out, out_mask = aug.augment(image, mask, params, seed=5, epoch=2, index=3)
  plain, plain_mask = aug.augment(image, mask, dict(params, p_jpeg_quality=0.0), seed=5, epoch=2,
                                  index=3)
  assert np.array_equal(out_mask, plain_mask) and (out_mask == 0).any()
  buffer = io.BytesIO()
  Image.fromarray(plain).save(buffer, format='JPEG', quality=90, subsampling=2)
  assert np.array_equal(out, np.asarray(Image.open(buffer)))
