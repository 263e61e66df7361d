import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from histojax import explain, plots

SIZE = 48
REGION = (slice(20, 28), slice(20, 28))


def region_logits(x):
  """Class 0: constant; class 1: mean of the pixels in rows 20:28, cols 20:28."""
  return jnp.stack([jnp.zeros(x.shape[0]), x[:, 20:28, 20:28, :].mean((1, 2, 3))], -1)


def smooth_region_logits(x):
  """Nonlinear in the region only, so IG must put everything there."""
  m = x[:, 20:28, 20:28, :]
  logit = jnp.tanh(2 * m).mean((1, 2, 3)) + (m ** 2).mean((1, 2, 3))
  return jnp.stack([jnp.zeros(x.shape[0]), logit], -1)


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Conv(4, (3, 3))(x))
    x = jnp.tanh(nn.Dense(8)(x.mean((1, 2))))
    return nn.Dense(3)(x)


def tiny_net_variables(seed=0):
  """Random TinyNet parameters built in numpy: model.init costs seconds of compilation."""
  rng = np.random.default_rng(seed)
  def layer(*shape):
    kernel = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    return {'kernel': kernel.astype(np.float32),
            'bias': (0.1 * rng.normal(size=shape[-1:])).astype(np.float32)}
  return {'params': {'Conv_0': layer(3, 3, 3, 4), 'Dense_0': layer(4, 8), 'Dense_1': layer(8, 3)}}


def test_occlusion_finds_the_region():
  image = np.ones((SIZE, SIZE, 3), np.float32)
  heat = explain.occlusion(region_logits, image, target=1, window=16, stride=8, batch=64)
  assert heat.shape == (SIZE, SIZE)
  # A 16-pixel window blurs the 8-pixel region into a plateau; its top is in the region.
  assert heat[REGION].max() == pytest.approx(heat.max())
  assert heat[REGION].min() > 0.5
  assert np.abs(heat[:8, :8]).max() < 1e-6 and np.abs(heat[40:, 40:]).max() < 1e-6
  # Several padded batches compute the same map; class 0 ignores the image.
  small = explain.occlusion(region_logits, image, target=1, window=16, stride=8, batch=7)
  np.testing.assert_allclose(small, heat, atol=1e-6)
  assert np.abs(explain.occlusion(region_logits, image, target=0)).max() == 0
  # A finer window resolves the region: the argmax falls inside it.
  fine = explain.occlusion(region_logits, image, target=1, window=8, stride=4)
  r, c = np.unravel_index(np.argmax(fine), fine.shape)
  assert 20 <= r < 28 and 20 <= c < 28
  assert np.abs(fine[:12, :]).max() < 1e-6 and np.abs(fine[:, 32:]).max() < 1e-6


def test_occlusion_covers_edges_and_prob_score():
  # stride 10 does not divide 48 - 16: the last window is moved flush with the edge. The
  # target logit is the sum of all (positive) pixels, so occluding any pixel lowers it: a
  # pixel no window covers would keep a zero heat (the right and bottom strips under Captum's
  # rule).
  total_logit = lambda x: jnp.stack([jnp.zeros(x.shape[0]), jnp.sum(x, (1, 2, 3))], -1)
  heat = explain.occlusion(total_logit, np.ones((SIZE, SIZE, 3), np.float32), target=1,
                           window=16, stride=10)
  assert heat.shape == (SIZE, SIZE) and heat.min() > 0
  image = np.random.default_rng(0).normal(size=(SIZE, SIZE, 3)).astype(np.float32)
  heat = explain.occlusion(region_logits, image, target=1, window=16, stride=10, score='prob')
  assert np.isfinite(heat).all() and heat.shape == (SIZE, SIZE)


def test_integrated_gradients_completeness_on_a_flax_model():
  model, variables = TinyNet(), tiny_net_variables()
  image = jnp.asarray(np.random.default_rng(1).normal(size=(SIZE, SIZE, 3)), jnp.float32)
  apply_fn = lambda x: model.apply(variables, x)
  target = int(jnp.argmax(apply_fn(image[None])[0]))
  attr = explain.integrated_gradients(apply_fn, image, target, steps=32)
  assert attr.shape == (SIZE, SIZE, 3)
  total, delta, rel = explain.completeness(apply_fn, image, target, attr)
  assert abs(delta) > 1e-3
  assert rel < 0.01, (total, delta)
  # Chunked evaluation of the path gives the same answer.
  chunked = explain.integrated_gradients(apply_fn, image, target, steps=32, batch=5)
  np.testing.assert_allclose(chunked, attr, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_concentrates_in_the_region():
  image = np.random.default_rng(2).uniform(0.5, 1.5, (SIZE, SIZE, 3)).astype(np.float32)
  attr = explain.integrated_gradients(smooth_region_logits, image, 1, steps=32)
  mass = np.abs(attr).sum(-1)
  assert mass[REGION].sum() / mass.sum() > 0.999
  assert mass[REGION].min() > 0
  rel = explain.completeness(smooth_region_logits, image, 1, attr)[2]
  assert rel < 0.01
  # A non-zero baseline: completeness holds against f(baseline).
  attr = explain.integrated_gradients(smooth_region_logits, image, 1, baseline=0.25)
  assert explain.completeness(smooth_region_logits, image, 1, attr, baseline=0.25)[2] < 0.01


@pytest.mark.parametrize('channels', [3, 1])
def test_overlay_png(tmp_path, channels):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (SIZE, SIZE, channels), dtype=np.uint8)
  heat = explain.occlusion(region_logits, np.ones((SIZE, SIZE, 3), np.float32), 1)
  path = plots.attribution_overlay(image, heat, tmp_path / 'sub' / 'occ.png',
                             'predicted: tumour / true: tumour')
  _check_figure(path)
  # Signed [H, W, C] attributions are summed over channels.
  signed = rng.normal(size=(SIZE, SIZE, 3))
  _check_figure(plots.attribution_overlay(image, signed, tmp_path / 'ig.png', 'ig'))


def _check_figure(path):
  """A readable PNG of a figure: wider than tall (image | overlay panels), with the heatmap's
  colours in it (a blank or greyscale canvas fails)."""
  from PIL import Image
  with Image.open(path) as png:
    assert png.format == 'PNG'
    rgb = np.asarray(png.convert('RGB')).astype(int)
  assert rgb.shape[1] > rgb.shape[0] >= 150
  saturation = rgb.max(-1) - rgb.min(-1)
  assert (saturation > 100).sum() > 300  # coloured heat and colour bar, not only grey


def test_task_explains_chosen_test_examples(tmp_path):
  """explain_indices picks the examples (titled with their index); out of range is an error."""
  import types
  from histojax.tasks import classification
  from configs import common
  config = common.base_config()
  config.update(dict(explain_samples=4, explain_indices=(2, 0), data=dict(mean=(0.5,),
                                                                          std=(0.25,))))
  task = classification.ClassificationTask(config, {'num_classes': 3,
                                                    'class_names': ['a', 'b', 'c']})
  rng = np.random.default_rng(0)
  source = [{'image': rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), 'label': i % 3}
            for i in range(5)]
  state = types.SimpleNamespace(params=tiny_net_variables()['params'], batch_stats={})
  model = types.SimpleNamespace(  # the task calls apply(..., train=False) like the real models
      apply=lambda variables, x, train: TinyNet().apply({'params': variables['params']}, x))
  (tmp_path / 'plots').mkdir()
  lines = task.explain(model, state, source, tmp_path, 'test')
  assert sorted(p.name for p in (tmp_path / 'plots').iterdir()) == [
      'explain_test_0_ig.png', 'explain_test_0_occlusion.png',
      'explain_test_1_ig.png', 'explain_test_1_occlusion.png']
  assert sum('.png' in l for l in lines) == 4
  task.explain_indices = (5,)
  with pytest.raises(ValueError, match='explain_indices'):
    task.explain(model, state, source, tmp_path, 'test')
