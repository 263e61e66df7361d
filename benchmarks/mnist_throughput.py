r"""Train-step throughput of the MNIST CNN (img/s after compile), and optionally a full run.

  python benchmarks/mnist_throughput.py [--batches=64,1024] [--dtypes=float32,bfloat16]
                                        [--steps=50] [--full_run_workdir=W]

Times the same jitted, donated step the train loop uses, on random uint8 batches already on
device, on whatever backend jax picks. Prints one JSON line per setting.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from configs import mnist_cnn
from benchmarks import cpu_compare
from histojax import train

flags.DEFINE_string('batches', '64,1024', 'Global batch sizes.')
flags.DEFINE_string('dtypes', 'float32,bfloat16', 'Compute dtypes.')
flags.DEFINE_integer('steps', 50, 'Timed steps per setting (after 3 warm-up steps).')
flags.DEFINE_string('full_run_workdir', None, 'If set, also run the full config there.')
FLAGS = flags.FLAGS


def time_steps(batch_size, dtype, steps):
  config = mnist_cnn.get_config()
  config.dtype = dtype
  rng = np.random.default_rng(0)
  host = {'image': rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
          'label': rng.integers(0, 10, batch_size).astype(np.int32)}
  seconds, compile_s = cpu_compare.time_train_step(config, host, 10, steps,
                                                   schedule=(859, 22334))
  return {'bench': 'mnist_cnn_train_step', 'device': jax.devices()[0].device_kind,
          'n_devices': jax.device_count(), 'batch': batch_size, 'dtype': dtype,
          'img_per_s': round(batch_size * steps / seconds, 1),
          'ms_per_step': round(1000 * seconds / steps, 3), 'first_step_s': round(compile_s, 2)}


def main(_):
  for dtype in FLAGS.dtypes.split(','):
    for batch in map(int, FLAGS.batches.split(',')):
      print(json.dumps(time_steps(batch, dtype, FLAGS.steps)), flush=True)
  if FLAGS.full_run_workdir:
    config = mnist_cnn.get_config()
    t0 = time.perf_counter()
    results = train.train_and_evaluate(config, FLAGS.full_run_workdir)
    print(json.dumps({'bench': 'mnist_cnn_full_run', 'device': jax.devices()[0].device_kind,
                      'wall_s': round(time.perf_counter() - t0, 1),
                      'test_accuracy': results['test']['accuracy']}), flush=True)


if __name__ == '__main__':
  app.run(main)
