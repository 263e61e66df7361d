r"""Host augmentation throughput: 256x256 crops/s from a 775x522 image, one core.

  taskset -c 0 python benchmarks/augment_throughput.py [--n=1500]

Reports crops per CPU-second (process time, so a busy machine inflates it less than wall time)
and wall-clock crops/s, for the default preset, without a mask, FLIPS_ONLY, and with every
transform forced on. One JSON line per preset.
"""
import json
import os
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')  # BLAS for the 3x3 colour matmul: stay on one core
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from histojax.data import augment

flags.DEFINE_integer('n', 1500, 'Timed crops per preset (after 20 warm-up crops).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (522, 775, 3), dtype=np.uint8)
  mask = rng.integers(0, 5, (522, 775)).astype(np.int32)
  defaults = augment.default_params()
  every = {k: 1.0 for k in defaults if k.startswith('p_')}
  presets = [('default', dict(defaults, crop_size=256), mask),
             ('default_no_mask', dict(defaults, crop_size=256), None),
             ('flips_only', dict(augment.FLIPS_ONLY, crop_size=256), mask),
             ('every_transform', dict(defaults, crop_size=256, **every), mask)]
  for name, params, m in presets:
    for i in range(20):
      augment.augment(image, m, params, seed=0, epoch=0, index=i)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(FLAGS.n):
      augment.augment(image, m, params, seed=0, epoch=1, index=i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps(dict(preset=name, crops_per_cpu_s=round(FLAGS.n / cpu, 1),
                          crops_per_wall_s=round(FLAGS.n / wall, 1),
                          ms_per_crop=round(1e3 * cpu / FLAGS.n, 3))))


if __name__ == '__main__':
  app.run(main)
