"""U-Net, ResNet18, torchvision weight import and sliding-window inference."""
import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from histojax import inference
from histojax.models import resnet, torch_import, unet

TINY_UNET = (4, 8, 16)            # 2 pooling levels
TINY_RESNET = (8, 16, 16, 32)


def _key(seed=0):
  # XLA:CPU compiles threefry bits for every parameter slowly (~25 s for a tiny U-Net init);
  # the RngBitGenerator-based impl compiles in a few seconds.
  return jax.random.key(seed, impl='rbg')


def _normal(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _n_params(variables):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def _train_apply(model, variables, x):
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                             rngs={'dropout': _key(1)})
  chex.assert_trees_all_equal_shapes(updates['batch_stats'], variables['batch_stats'])
  return out


# ---------------------------------------------------------------------------------- U-Net

@pytest.mark.parametrize('shape,num_classes', [((2, 32, 32, 3), 1), ((1, 64, 96, 3), 1),
                                               ((3, 16, 48, 1), 4), ((1, 4, 8, 3), 2)])
def test_unet_shapes(shape, num_classes):
  model = unet.UNet(num_classes, features=TINY_UNET, dropout=0.5)
  x = jnp.zeros(shape)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), shape[:3] + (num_classes,))
  train_apply = functools.partial(_train_apply, model)
  chex.assert_shape(jax.eval_shape(train_apply, variables, x), shape[:3] + (num_classes,))


def test_unet_forward_and_train_mode():
  model = unet.UNet(3, features=TINY_UNET, dropout=0.5)
  x = _normal((2, 32, 48, 3))
  variables = jax.jit(model.init)(_key(), x)
  out = jax.jit(model.apply)(variables, x)
  chex.assert_shape(out, (2, 32, 48, 3))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  train_out = jax.jit(functools.partial(_train_apply, model))(variables, x)
  chex.assert_shape(train_out, (2, 32, 48, 3))
  assert not np.allclose(out, train_out)   # batch statistics and dropout in train mode


def test_unet_default_matches_torch_peer():
  """Default widths 64..1024: the peer's layout and parameter count (31,037,633 for 3 → 1)."""
  model = unet.UNet(1, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 64, 96, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), (2, 64, 96, 1))
  assert jax.eval_shape(model.apply, variables, x).dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))

  def peer_count(cin=3, cout=1, widths=(64, 128, 256, 512, 1024)):
    block = lambda a, b: 9 * a * b + 2 * b + 9 * b * b + 2 * b   # two bias-free convs + BN
    total, c = 0, cin
    for w in widths:
      total, c = total + block(c, w), w
    for w in reversed(widths[:-1]):
      total, c = total + 4 * c * w + w + block(2 * w, w), w     # ConvTranspose2d has a bias
    return total + c * cout + cout
  assert _n_params(variables) == peer_count() == 31_037_633
  params = variables['params']
  assert params['upconv_0']['kernel'].shape == (2, 2, 1024, 512)
  assert params['up_0']['Conv_0']['kernel'].shape == (3, 3, 1024, 512)
  assert 'bias' not in params['down_0']['Conv_0']


@pytest.mark.parametrize('shape', [(1, 30, 32, 3), (1, 32, 34, 3), (32, 32, 3)])
def test_unet_rejects_bad_size(shape):
  model = unet.UNet(1, features=TINY_UNET)
  with pytest.raises(ValueError, match=str(shape).replace('(', r'\(').replace(')', r'\)')):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


# ---------------------------------------------------------------------------------- ResNet

@pytest.mark.parametrize('size,channels,stem', [(100, 3, 'small'), (100, 1, 'small'),
                                                (64, 3, 'small'), (64, 1, 'small'),
                                                (64, 1, 'imagenet'), (100, 3, 'imagenet')])
def test_resnet18_shapes(size, channels, stem):
  model = resnet.ResNet18(4, stem=stem)
  x = jnp.zeros((2, size, size, channels))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), (2, 4))
  chex.assert_shape(jax.eval_shape(functools.partial(_train_apply, model), variables, x), (2, 4))
  assert variables['params']['conv1']['kernel'].shape == (
      (7, 7) if stem == 'imagenet' else (3, 3)) + (channels, 64)


def test_resnet_forward_and_train_mode():
  model = resnet.ResNet18(4, widths=TINY_RESNET)
  x = _normal((2, 36, 36, 1))
  variables = jax.jit(model.init)(_key(), x)
  out = jax.jit(model.apply)(variables, x)
  chex.assert_shape(out, (2, 4))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  chex.assert_shape(jax.jit(functools.partial(_train_apply, model))(variables, x), (2, 4))


def test_resnet18_param_count_and_options():
  full = resnet.ResNet18(1000, stem='imagenet')
  variables = jax.eval_shape(full.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert _n_params(variables) == 11_689_512   # torchvision.models.resnet18()
  small = resnet.ResNet18(4, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 100, 100, 1))
  variables = jax.eval_shape(small.init, jax.random.key(0), x)
  chex.assert_shape(jax.eval_shape(small.apply, variables, x), (2, 4))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))

  zero = resnet.ResNet18(4, widths=TINY_RESNET, zero_init_residual=True)
  params = jax.jit(zero.init)(_key(), x)['params']
  assert all(np.all(params[f'layer{s}_{b}']['bn2']['scale'] == 0)
             for s in range(1, 5) for b in range(2))
  assert np.all(params['layer1_0']['bn1']['scale'] == 1)
  with pytest.raises(ValueError, match='stem'):
    jax.eval_shape(resnet.ResNet18(4, stem='tiny').init, jax.random.key(0), x)


# ---------------------------------------------------------------------------- torch import

def torchvision_resnet18_state_dict(num_classes=1000, in_channels=3, seed=0):
  """Random arrays with torchvision resnet18().state_dict()'s exact keys and shapes."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(key, cout, cin, k):
    sd[key + '.weight'] = rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k))

  def bn(key, c):
    sd[key + '.weight'] = rng.uniform(0.5, 1.5, c)
    sd[key + '.bias'] = rng.normal(0, 0.1, c)
    sd[key + '.running_mean'] = rng.normal(0, 0.1, c)
    sd[key + '.running_var'] = rng.uniform(0.5, 1.5, c)
    sd[key + '.num_batches_tracked'] = np.array(7, np.int64)

  conv('conv1', 64, in_channels, 7)
  bn('bn1', 64)
  cin = 64
  for s, width in enumerate((64, 128, 256, 512)):
    for b in range(2):
      key = f'layer{s + 1}.{b}'
      conv(key + '.conv1', width, cin, 3)
      bn(key + '.bn1', width)
      conv(key + '.conv2', width, width, 3)
      bn(key + '.bn2', width)
      if cin != width or (s > 0 and b == 0):
        conv(key + '.downsample.0', width, cin, 1)
        bn(key + '.downsample.1', width)
      cin = width
  sd['fc.weight'] = rng.normal(0, 0.05, (num_classes, 512))
  sd['fc.bias'] = rng.normal(0, 0.05, num_classes)
  return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in sd.items()}


def torch_reference_forward(sd, x_nchw):
  """torchvision ResNet18 eval forward, written in torch's NCHW/OIHW conventions."""
  def conv(x, key, stride, pad):
    return jax.lax.conv_general_dilated(x, sd[key + '.weight'], (stride, stride),
                                        [(pad, pad)] * 2,
                                        dimension_numbers=('NCHW', 'OIHW', 'NCHW'))

  def bn(x, key):
    c = lambda name: sd[f'{key}.{name}'][None, :, None, None]
    return (x - c('running_mean')) / jnp.sqrt(c('running_var') + 1e-5) * c('weight') + c('bias')

  x = jax.nn.relu(bn(conv(x_nchw, 'conv1', 2, 3), 'bn1'))
  x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                            [(0, 0), (0, 0), (1, 1), (1, 1)])
  for s in range(4):
    for b in range(2):
      key, stride = f'layer{s + 1}.{b}', 2 if s > 0 and b == 0 else 1
      y = jax.nn.relu(bn(conv(x, key + '.conv1', stride, 1), key + '.bn1'))
      y = bn(conv(y, key + '.conv2', 1, 1), key + '.bn2')
      if key + '.downsample.0.weight' in sd:
        x = bn(conv(x, key + '.downsample.0', stride, 0), key + '.downsample.1')
      x = jax.nn.relu(x + y)
  x = x.mean(axis=(2, 3))
  return x @ sd['fc.weight'].T + sd['fc.bias']


def test_state_dict_helper_is_torchvision_layout():
  sd = torchvision_resnet18_state_dict()
  assert len(sd) == 122   # 62 parameters + 60 BatchNorm buffers
  trainable = [k for k in sd if not k.endswith(('running_mean', 'running_var', 'tracked'))]
  assert sum(sd[k].size for k in trainable) == 11_689_512
  assert {k for k in sd if not k.endswith('num_batches_tracked')} == set(torch_import.torch_keys())


def test_torch_import_matches_torch_forward(tmp_path):
  sd = torchvision_resnet18_state_dict(num_classes=10)
  np.savez(tmp_path / 'resnet18.npz', **sd)
  model = resnet.ResNet18(10, stem='imagenet')
  x = _normal((2, 64, 64, 3))
  init = jax.eval_shape(model.init, jax.random.key(1), x)
  variables = torch_import.convert_resnet18(tmp_path / 'resnet18.npz', init)
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(variables))

  logits, state = jax.jit(functools.partial(
      model.apply, capture_intermediates=lambda m, _: m.scope.path == ('conv1',)))(variables, x)
  stem = state['intermediates']['conv1']['__call__'][0]
  x_nchw = x.transpose(0, 3, 1, 2)
  want_stem = jax.lax.conv_general_dilated(x_nchw, sd['conv1.weight'], (2, 2), [(3, 3)] * 2,
                                           dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  np.testing.assert_allclose(stem.transpose(0, 3, 1, 2), want_stem, rtol=1e-4, atol=1e-4)
  want = jax.jit(torch_reference_forward)(sd, x_nchw)
  np.testing.assert_allclose(logits, want, rtol=1e-3, atol=1e-3 * float(jnp.abs(want).max()))
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], sd['fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['layer2_0']['downsample_1']['var'],
                                sd['layer2.0.downsample.1.running_var'])


def test_torch_import_grayscale():
  """Summed RGB filters on a gray image = the RGB model on that image repeated over RGB."""
  sd = torchvision_resnet18_state_dict(num_classes=10)
  gray = _normal((2, 32, 32, 1))
  model = resnet.ResNet18(10, stem='imagenet')
  v_gray = torch_import.convert_resnet18(sd, jax.eval_shape(model.init, jax.random.key(1), gray))
  v_rgb = torch_import.convert_resnet18(sd)
  np.testing.assert_allclose(v_gray['params']['conv1']['kernel'][..., 0, :],
                             v_rgb['params']['conv1']['kernel'].sum(axis=2), rtol=1e-6)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(v_gray, gray), apply(v_rgb, jnp.repeat(gray, 3, axis=-1)),
                             rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match='in_channels=4'):
    torch_import.convert_resnet18(sd, in_channels=4)


def test_torch_import_skip_head_and_key_errors():
  sd = torchvision_resnet18_state_dict(num_classes=1000)
  model = resnet.ResNet18(4, stem='imagenet')
  init = jax.jit(model.init)(_key(1), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='skip_head=True'):
    torch_import.convert_resnet18(sd, init)
  variables = torch_import.convert_resnet18(sd, init, skip_head=True)
  np.testing.assert_array_equal(variables['params']['fc']['kernel'],
                                init['params']['fc']['kernel'])
  np.testing.assert_array_equal(variables['params']['layer4_1']['conv2']['kernel'],
                                sd['layer4.1.conv2.weight'].transpose(2, 3, 1, 0))
  chex.assert_shape(jax.eval_shape(model.apply, variables, jnp.zeros((1, 32, 32, 3))), (1, 4))
  # A backbone-only checkpoint is fine when the head is skipped, not otherwise.
  headless = {k: v for k, v in sd.items() if not k.startswith('fc.')}
  assert 'fc' not in torch_import.convert_resnet18(headless, skip_head=True)['params']
  with pytest.raises(ValueError, match=r"missing keys \['fc.bias', 'fc.weight'\]"):
    torch_import.convert_resnet18(headless)

  broken = dict(sd, **{'layer5.0.conv1.weight': np.zeros((1, 1, 3, 3), np.float32)})
  del broken['layer1.0.bn1.running_var']
  with pytest.raises(ValueError, match=r"missing keys \['layer1.0.bn1.running_var'\], "
                     r"unexpected keys \['layer5.0.conv1.weight'\]"):
    torch_import.convert_resnet18(broken)
  small_stem = resnet.ResNet18(1000)   # stem='small': a 3x3 conv1
  with pytest.raises(ValueError, match='stem="imagenet"'):
    torch_import.convert_resnet18(
        sd, jax.eval_shape(small_stem.init, jax.random.key(1), jnp.zeros((1, 32, 32, 3))))


# ---------------------------------------------------------------------------- sliding window

def test_window_starts():
  assert inference.window_starts(100, 256, 0.25) == [0]
  assert inference.window_starts(256, 256, 0.25) == [0]
  assert inference.window_starts(522, 256, 0.25) == [0, 192, 266]
  assert inference.window_starts(775, 256, 0.25) == [0, 192, 384, 519]
  assert inference.window_starts(512, 256, 0.0) == [0, 256]
  w = inference.importance_map((256, 256), 'gaussian')
  assert w.max() == 1 and w.min() >= 1e-3 and w.dtype == np.float32


@pytest.mark.parametrize('blend', ['constant', 'gaussian'])
@pytest.mark.parametrize('size', [(100, 130), (256, 256), (522, 775)])
def test_sliding_window_identity(size, blend):
  image = np.random.default_rng(0).normal(size=size + (3,)).astype(np.float32)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def identity(windows):
    return windows

  out = inference.sliding_window(identity, image, window=(256, 256), overlap=0.25,
                                 window_batch=8, blend=blend)
  assert out.shape == image.shape and out.dtype == np.float32
  if blend == 'constant':
    np.testing.assert_array_equal(out, image)
  else:
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('window_batch', [1, 5, 12, 16])
def test_sliding_window_batches(window_batch):
  """Every call gets exactly window_batch windows; copies that fill the last are dropped."""
  image = np.random.default_rng(0).uniform(size=(90, 70, 2)).astype(np.float32)
  seen = []

  def predict(windows):
    assert windows.shape == (window_batch, 32, 32, 2)
    seen.append(len(windows))
    return np.concatenate([windows * 2, np.ones_like(windows[..., :1])], axis=-1)

  out = inference.sliding_window(predict, image, window=32, overlap=0.5,
                                 window_batch=window_batch, blend='constant')
  n_windows = len(inference.window_starts(90, 32, 0.5)) * len(inference.window_starts(70, 32, 0.5))
  assert n_windows == 20 and len(seen) == -(-n_windows // window_batch)
  chex.assert_shape(out, (90, 70, 3))
  np.testing.assert_allclose(out[..., :2], image * 2, rtol=1e-6)
  np.testing.assert_allclose(out[..., 2], 1, rtol=1e-6)


def test_sliding_window_unet_equals_direct_apply():
  model = unet.UNet(2, features=TINY_UNET)
  image = np.random.default_rng(0).normal(size=(48, 40, 3)).astype(np.float32)
  variables = jax.jit(model.init)(_key(), image[None])
  predict = jax.jit(lambda w: model.apply(variables, w))
  out = inference.sliding_window(predict, image, window=(48, 40), window_batch=2,
                                 blend='gaussian', pad_mode='constant')
  np.testing.assert_allclose(out, predict(image[None])[0], rtol=1e-5, atol=1e-5)
  small = inference.sliding_window(predict, image[:30, :20], window=(48, 40), window_batch=2)
  chex.assert_shape(small, (30, 20, 2))


def test_torch_import_cli_with_stub_torch(tmp_path):
  """The .pth → .npz CLI, with a stub `torch` whose load() returns a wrapped state dict."""
  sd = torchvision_resnet18_state_dict(num_classes=3)
  np.savez(tmp_path / 'src.npz', **sd)
  (tmp_path / 'stub').mkdir()
  (tmp_path / 'stub' / 'torch.py').write_text(
      'import numpy as np\n'
      'class T:\n'
      '  def __init__(self, a): self.a = a\n'
      '  def detach(self): return self\n'
      '  def cpu(self): return self\n'
      '  def numpy(self): return self.a\n'
      'def load(path, map_location, weights_only):\n'
      '  with np.load(path) as f:\n'
      '    return {"state_dict": {"module." + k: T(f[k]) for k in f.files}, "epoch": 3}\n')
  env = dict(os.environ, PYTHONPATH=f'{tmp_path / "stub"}{os.pathsep}{ROOT}', JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'histojax.models.torch_import',
                  f'--pt={tmp_path / "src.npz"}', f'--out={tmp_path / "out.npz"}'],
                 check=True, env=env, cwd=tmp_path)
  with np.load(tmp_path / 'out.npz') as f:
    assert sorted(f.files) == sorted(sd)
    np.testing.assert_array_equal(f['layer3.1.conv2.weight'], sd['layer3.1.conv2.weight'])


def test_unet_base_width_doubles_per_level():
  model = unet.UNet(num_classes=1, features=(1, 1, 1), base_width=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  widths = [variables['params'][f'down_{i}']['Conv_0']['kernel'].shape[-1] for i in range(3)]
  assert widths == [4, 8, 16]
  assert variables['params']['up_1']['Conv_0']['kernel'].shape[-1] == 4
  plain = unet.UNet(num_classes=1, features=(3, 5, 7)).init(jax.random.key(0),
                                                           jnp.zeros((1, 16, 16, 3)))
  assert plain['params']['down_2']['Conv_0']['kernel'].shape[-1] == 7
