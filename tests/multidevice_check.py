"""Run in its own process (the fake-device flag must precede `import jax`): the sharded train
step on 8 CPU devices equals the single-device step, and is traced once."""
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import chex  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
from jax.sharding import AxisType

from configs import mnist_cnn
from histojax import models, schedules, sharding, tasks, train


def run(devices, batches, config):
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)
  task = tasks.get_task(config, {'num_classes': 10})
  model = models.get_model(config, 10)
  tx, _ = schedules.optimizer(config, 100, 1000)
  init_rng, train_rng = jax.random.split(jax.random.key(0))
  state = jax.jit(train.make_init(model, task, tx, {k: v[:1] for k, v in batches[0].items()}),
                  out_shardings=sharding.replicated(mesh))(init_rng)
  step = jax.jit(chex.assert_max_traces(train.make_train_step(model, task, tx, train_rng), n=1),
                 donate_argnums=(0,))
  for batch in batches:
    state, metrics = step(state, sharding.to_global(mesh, batch))
  return jax.device_get(state.params), float(metrics['loss'])


def main():
  assert jax.device_count() == 8
  config = mnist_cnn.get_config('smoke,aug')
  # Adam's first steps are ~lr*sign(grad): rounding noise in near-zero gradients would flip
  # whole-lr updates, so compare with SGD, whose update is proportional to the gradient.
  config.optimizer.name, config.optimizer.lr = 'sgd', 0.05
  rng = np.random.default_rng(0)
  batches = [{'image': rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
              'label': rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
  chex.clear_trace_counter()
  one, loss1 = run(jax.devices()[:1], batches, config)
  chex.clear_trace_counter()
  eight, loss8 = run(jax.devices(), batches, config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), one, eight)
  assert abs(loss1 - loss8) < 1e-5, (loss1, loss8)
  print('MULTIDEVICE OK', loss1, loss8)


if __name__ == '__main__':
  main()
