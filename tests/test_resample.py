"""The working-resolution path (config key data.scale): resampling helpers and their use."""
import numpy as np
import pytest

from histojax.data import resample


def test_mask_nearest_keeps_labels_and_size_rounds():
  mask = np.kron(np.arange(12).reshape(3, 4), np.ones((4, 4), np.int32))  # 12 x 16 blocks
  small = resample.mask(mask, 0.5)
  assert small.shape == (6, 8) and small.dtype == mask.dtype
  np.testing.assert_array_equal(small, np.kron(np.arange(12).reshape(3, 4), np.ones((2, 2))))
  assert resample.mask(np.zeros((775, 522), np.uint8), 0.5).shape == (388, 261)


def test_image_downsample_averages_and_keeps_dtype():
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, ::2] = 200  # stripes one pixel wide: antialiasing averages them
  small = resample.image(image, 0.5)
  assert small.shape == (4, 4, 3) and small.dtype == np.uint8
  assert np.all(np.abs(small[:, 1:3].astype(int) - 100) <= 1)  # interior: edges reflect


def test_probabilities_upsample_to_the_original_size_and_stay_normalised():
  rng = np.random.default_rng(0)
  p = rng.uniform(size=(13, 9, 1)).astype(np.float32)
  probs = np.concatenate([1 - p, p], -1)
  big = resample.probabilities(probs, (26, 17))
  assert big.shape == (26, 17, 2)
  np.testing.assert_allclose(big.sum(-1), 1.0, atol=1e-5)
  assert big.min() >= probs.min() - 1e-6 and big.max() <= probs.max() + 1e-6
  # A constant field stays constant; the identity size is a no-op.
  np.testing.assert_allclose(resample.probabilities(np.full((5, 5, 2), 0.5, np.float32),
                                                    (10, 10)), 0.5, atol=1e-6)
  assert resample.probabilities(probs, (13, 9)) is probs


@pytest.mark.parametrize('bad', [0, -0.5, 1.5])
def test_scale_out_of_range_names_the_key(bad):
  with pytest.raises(ValueError, match='data.scale'):
    resample.check_scale(bad)


def test_segmentation_predicts_at_the_working_resolution_and_returns_full_size():
  """predict_image downsamples, and its probabilities come back at the input's size."""
  import jax
  import ml_collections
  from histojax import sharding, tasks, train
  from histojax.models import unet
  from configs import common
  config = common.base_config()
  config.update(dict(
      task='segmentation', data=dict(crop_size=32, scale=0.5),
      inference=dict(window=(32, 32), overlap=0.25, blend='gaussian', window_batch=4)))
  task = tasks.get_task(config, {'num_classes': 2})
  model = unet.UNet(num_classes=1, features=(4, 8))
  image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  state = train.TrainState(step=0, params=variables['params'],
                           batch_stats=variables['batch_stats'], opt_state=())
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(mesh=[('data', -1)])))
  seen = []
  original = task._predictor(model, mesh)
  task._predict_cache[(id(model), id(mesh))] = lambda s, w: (seen.append(w.shape), original(s, w))[1]
  probs, labels = task.predict_image(model, state, mesh, image)
  assert probs.shape == (50, 70, 2) and labels.shape == (50, 70)
  assert all(shape[1:3] == (32, 32) for shape in seen)
  assert sum(shape[0] for shape in seen) < 12  # 25 x 35 px in 32-px windows, not 50 x 70
