"""Transfer learning: init_from another run or torchvision weights; head-first freezing; L2."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import require_data
from histojax import checkpoint, schedules, train
from histojax.models import resnet


def test_glas_unet_initialises_nuclei_unet(tmp_path, caplog):
  require_data('glas')
  require_data('crchistophenotypes')
  from configs import crchisto_nuclei_unet, warwick_unet
  source = warwick_unet.get_config('smoke')
  train.train_and_evaluate(source, tmp_path / 'glas')
  saved = checkpoint.load_variables(tmp_path / 'glas')

  target = crchisto_nuclei_unet.get_config('smoke')
  target.init_from = str(tmp_path / 'glas')
  target.total_steps = 1  # lr warm-up is 0 in smoke: one step moves params a little
  target.optimizer.lr = 0.0
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(target, tmp_path / 'nuclei')
  assert any('kept 0 freshly initialised' in r.getMessage() for r in caplog.records)
  after = checkpoint.load_variables(tmp_path / 'nuclei')
  jax.tree.map(np.testing.assert_array_equal, after['params'], saved['params'])


def test_fine_tune_other_class_count_head_first(tmp_path, caplog):
  """nuclei_cnn (4 classes) -> patches_cnn (2 classes): the head is re-initialised, and with
  freeze.steps the body does not move while the head trains."""
  require_data('glas')
  require_data('crchistophenotypes')
  from configs import nuclei_cnn, patches_cnn
  train.train_and_evaluate(nuclei_cnn.get_config('smoke'), tmp_path / 'nuclei')
  saved = checkpoint.load_variables(tmp_path / 'nuclei')
  target = patches_cnn.get_config('smoke')
  target.init_from = str(tmp_path / 'nuclei')
  target.freeze.steps, target.total_steps = 5, 3
  target.explain_samples = 0
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(target, tmp_path / 'tiles')
  assert any('kept 2 freshly initialised: /head/bias, /head/kernel' in r.getMessage()
             for r in caplog.records)
  assert not any(r.levelno >= logging.WARNING and 'init_from' in r.getMessage()
                 for r in caplog.records)
  after = checkpoint.load_variables(tmp_path / 'tiles')['params']
  assert after['head']['kernel'].shape[-1] == 2
  body = {k: v for k, v in after.items() if k != 'head'}
  jax.tree.map(np.testing.assert_array_equal, body,
               {k: v for k, v in saved['params'].items() if k != 'head'})


def test_npz_into_small_stem_warns(tmp_path, caplog):
  require_data('crchistophenotypes')
  from configs import nuclei_resnet18
  config = nuclei_resnet18.get_config('smoke')
  config.model.widths = (64, 128, 256, 512)  # torchvision widths, small stem: conv1 differs
  config.total_steps, config.explain_samples = 1, 0
  _torchvision_resnet18_npz(tmp_path / 'r18.npz')
  config.init_from = str(tmp_path / 'r18.npz')
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, tmp_path / 'w')
  warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and
             'stay random' in r.getMessage()]
  assert warning and '/conv1/kernel' in warning[0] and ':imagenet' in warning[0]


def _torchvision_resnet18_npz(path, num_classes=1000):
  """A random state dict with torchvision's resnet18 keys and shapes (no torch needed)."""
  from histojax.models import torch_import
  rng = np.random.default_rng(0)
  model = resnet.ResNet18(num_classes=num_classes, stem='imagenet')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  arrays = {}
  for key, (collection, flax_path, kind) in torch_import.torch_keys().items():
    leaf = shapes[collection]
    for part in flax_path:
      leaf = leaf[part]
    shape = leaf.shape
    if kind == 'conv':
      shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO → OIHW
    elif kind == 'linear':
      shape = shape[::-1]
    arrays[key] = rng.normal(size=shape).astype(np.float32)
  arrays['bn1.num_batches_tracked'] = np.array(5)
  np.savez(path, **arrays)
  return arrays


def test_torchvision_npz_loads_all_but_the_head(tmp_path):
  arrays = _torchvision_resnet18_npz(tmp_path / 'r18.npz')
  source = checkpoint.load_variables(tmp_path / 'r18.npz')
  model = resnet.ResNet18(num_classes=4, stem='imagenet')
  target = model.init(jax.random.key(1), jnp.zeros((1, 100, 100, 3)))
  params, loaded, skipped = checkpoint.merge_matching(target['params'], source['params'])
  assert sorted(skipped) == ['/fc/bias', '/fc/kernel']
  assert len(loaded) == len(jax.tree.leaves(target['params'])) - 2
  np.testing.assert_array_equal(params['conv1']['kernel'],
                                arrays['conv1.weight'].transpose(2, 3, 1, 0))


def test_head_first_freezes_body_for_n_steps():
  params = {'body': {'kernel': jnp.ones(3)}, 'fc': {'kernel': jnp.ones(2)}}
  tx = schedules.head_first(optax.sgd(0.1), ('fc',), steps=2)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  history = []
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((float(params['body']['kernel'][0]), float(params['fc']['kernel'][0])))
  np.testing.assert_allclose([b for b, _ in history], [1.0, 1.0, 0.9], rtol=1e-6)
  np.testing.assert_allclose([h for _, h in history], [0.9, 0.8, 0.7], rtol=1e-6)


def test_l2_penalty_is_an_explicit_loss_term():
  from configs import common
  config = common.base_config()
  config.l2_kernel, config.l2_bias = 0.5, 0.1
  penalty = train.make_l2_penalty(config)
  params = {'Conv_0': {'kernel': jnp.full((2,), 2.0), 'bias': jnp.full((3,), 1.0)},
            'BatchNorm_0': {'scale': jnp.ones(4), 'bias': jnp.ones(4)},  # not regularised
            'block': {'Dense_0': {'kernel': jnp.ones((1, 2)), 'bias': jnp.full((2,), 2.0)}}}
  np.testing.assert_allclose(penalty(params), 0.5 * (8 + 2) + 0.1 * (3 + 8), rtol=1e-6)
