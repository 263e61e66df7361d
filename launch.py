r"""histojax entry point.

  python launch.py --config=configs/mnist_cnn.py[:ARG] --workdir=W [--mode=train|eval]
                   [--config.key=value ...]
  python launch.py --mode=predict --workdir=W --input=IMAGE|FOLDER|CSV --output=DIR

`--mode=train` trains (resuming from W's latest checkpoint if there is one), then evaluates the
best checkpoint on the test split and writes W/report.md. `--mode=eval` only does the latter.
`--mode=predict` applies W's best checkpoint to new images.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Task config: configs/<task>.py[:arg].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run folder: checkpoints, metrics.jsonl, report.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'What to do.')
flags.DEFINE_string('input', None, 'predict: an image, a folder of images, or a CSV of paths.')
flags.DEFINE_string('output', None, 'predict: folder for masks/overlays or predictions.csv.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
FLAGS = flags.FLAGS


def quiet_orbax():
  """Orbax logs every file it writes at INFO; keep its warnings only."""
  class _Filter(logging.Filter):
    def filter(self, record):
      return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname
  for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
    handler.addFilter(_Filter())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.workdir is None:
    raise app.UsageError('--workdir is required.')
  if FLAGS.mode == 'predict':
    if not (FLAGS.input and FLAGS.output):
      raise app.UsageError('--mode=predict needs --input and --output.')
    logging.getLogger().setLevel(logging.INFO)
    quiet_orbax()
    from histojax import predict  # pylint: disable=g-import-not-at-top
    predict.run(FLAGS.workdir, FLAGS.input, FLAGS.output)
    return
  config = FLAGS.config
  if config is None:
    saved = os.path.join(FLAGS.workdir, 'config.json')
    if FLAGS.mode != 'eval' or not os.path.exists(saved):
      raise app.UsageError('--config is required (or --mode=eval on a workdir with config.json).')
    import ml_collections  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    with open(saved, encoding='utf-8') as f:
      config = ml_collections.ConfigDict(json.load(f))
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or config.distributed:
    if jax.config.jax_platforms in (None, '', 'cpu') and FLAGS.coordinator_address:
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  from histojax import train  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.INFO)
  quiet_orbax()
  train.train_and_evaluate(config, FLAGS.workdir, mode=FLAGS.mode)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  app.run(main)
