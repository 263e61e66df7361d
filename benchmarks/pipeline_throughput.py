r"""Training examples per second out of the real input pipeline (grain + full augmentation),
for a config, at several worker counts.

  python benchmarks/pipeline_throughput.py --config=configs/warwick_unet.py --workers=0,1,2
  python benchmarks/pipeline_throughput.py --config=configs/nuclei_resnet18.py --workers=0,2

Measures what the train loop pulls: batches of augmented crops (GlaS: 256x256 from whole
images; nuclei: 100x100 patches), after a warm-up batch. Prints one JSON line per setting.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags

from histojax import tasks
from histojax.data import datasets, pipeline

config_flags.DEFINE_config_file('config', None, 'Task config.', lock_config=False)
flags.DEFINE_string('workers', '0,1,2', 'Worker process counts to try.')
flags.DEFINE_integer('batches', 20, 'Timed batches per setting.')
flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')
FLAGS = flags.FLAGS


def main(_):
  config = FLAGS.config
  splits = datasets.get_splits(config)
  task = tasks.get_task(config, splits.info)
  for workers in map(int, FLAGS.workers.split(',')):
    stream = pipeline.train_stream(splits.train, global_batch=FLAGS.batch_size, seed=0,
                                   workers=workers, transform=task.train_transform)
    next(stream)  # warm-up: worker start-up, first decode
    t0 = time.perf_counter()
    for _ in range(FLAGS.batches):
      batch = next(stream)
    seconds = time.perf_counter() - t0
    print(json.dumps({'bench': 'pipeline', 'config': config.dataset, 'workers': workers,
                      'crop': list(batch['image'].shape[1:]), 'cpus': os.cpu_count(),
                      'examples_per_s': round(FLAGS.batches * FLAGS.batch_size / seconds, 1)}),
          flush=True)


if __name__ == '__main__':
  app.run(main)
