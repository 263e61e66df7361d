r"""histojax entry point.

  python launch.py --config=configs/mnist_cnn.py[:ARG] --workdir=W [--mode=train|eval]
                   [--config.key=value ...]
  python launch.py --mode=predict --workdir=W --input=IMAGE|FOLDER|CSV --output=DIR
  python launch.py --mode=sweep --config=configs/<task>.py[:ARG] --sweep=sweeps/<name>.py[:ARG]
                   --workdir=W [--storage=URL] [--sweep_workers=N] [--study_name=NAME]

`--mode=train` trains (resuming from W's latest checkpoint if there is one), then evaluates the
best checkpoint on the test split and writes W/report.md. `--mode=eval` only does the latter.
`--mode=predict` applies W's best checkpoint to new images. `--mode=sweep` runs an Optuna
study of trials W/trials/<n> (histojax/sweep.py), then writes W/sweep.md. In eval and
predict, --config is optional (W/config.json is used); given, its run-time settings
(inference.*, eval batch, report options) apply, and keys that shape the model or data must
match the run's.

Expected errors (bad data, a bad config value, a refused workdir, a diverged loss) print one
message and exit with status 1; `--debug` shows their traceback.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Task config: configs/<task>.py[:arg].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run folder: checkpoints, metrics.jsonl, report.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'sweep'], 'What to do.')
flags.DEFINE_string('sweep', None, 'sweep: the sweep file, sweeps/<name>.py[:arg].')
flags.DEFINE_string('storage', None, 'sweep: the Optuna storage URL (default: SQLite '
                    'W/study.db); postgresql://user:password@host:port/db shares one study '
                    'between machines.')
flags.DEFINE_integer('sweep_workers', 1, 'sweep: worker processes on this machine.')
flags.DEFINE_string('study_name', None, 'sweep: the study\'s name in the storage (default: '
                    'the sweep file\'s name and argument).')
flags.DEFINE_string('input', None, 'predict: an image or slide, a folder of them, or a CSV '
                    'of paths.')
flags.DEFINE_string('output', None, 'predict: folder for masks/overlays or predictions.csv.')
flags.DEFINE_bool('save_probs', False, 'predict (segmentation): also <stem>_probs.npy, the '
                  'class probabilities [H, W, C] as float16.')
flags.DEFINE_float('microns_per_pixel', None, 'predict (segmentation): the inputs\' pixel size; '
                   'adds areas in µm² to the GeoJSON and centroid outputs of images; for '
                   'slides whose metadata has none, their pixel size.')
flags.DEFINE_alias('mpp', 'microns_per_pixel')
flags.DEFINE_string('shard', None, 'predict: I/N, every N-th input from the I-th (I from 0), '
                    'for a job array over a cohort.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('debug', False, 'Show the traceback of expected errors too.')
FLAGS = flags.FLAGS


def main(argv):
  try:
    _main(argv)
  except Exception as e:  # pylint: disable=broad-except
    from histojax import errors  # pylint: disable=g-import-not-at-top
    if FLAGS.debug or not isinstance(e, errors.UserError):
      raise
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.write(f'histojax: error: {e}\n')
    sys.stderr.flush()
    # Skip interpreter teardown: background threads of orbax/grain/asyncio print noise there
    # ("Event loop is closed"); files are already closed by the code that raised.
    os._exit(1)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.workdir is None:
    raise app.UsageError('--workdir is required.')
  from histojax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from histojax.console import setup_console  # pylint: disable=g-import-not-at-top
  if FLAGS.mode == 'predict':
    if not (FLAGS.input and FLAGS.output):
      raise app.UsageError('--mode=predict needs --input and --output.')
    setup_console()
    from histojax import predict  # pylint: disable=g-import-not-at-top
    predict.run(FLAGS.workdir, FLAGS.input, FLAGS.output, config=FLAGS.config,
                options={'save_probs': FLAGS.save_probs,
                         'microns_per_pixel': FLAGS.microns_per_pixel,
                         'shard': FLAGS.shard})
    return
  config = FLAGS.config
  if FLAGS.mode == 'sweep':
    if config is None or not FLAGS.sweep:
      raise app.UsageError('--mode=sweep needs --config and --sweep.')
    if FLAGS.sweep_workers < 1:
      raise app.UsageError('--sweep_workers must be >= 1.')
    setup_console()
    from histojax import sweep  # pylint: disable=g-import-not-at-top
    sweep.run(config, _config_spec(), FLAGS.sweep, FLAGS.workdir, FLAGS.storage,
              FLAGS.sweep_workers, FLAGS.study_name, argv=sys.argv, exit_on_signal=True)
    return
  if config is None:
    if FLAGS.mode != 'eval':
      raise app.UsageError('--config is required (or --mode=eval on a workdir with config.json).')
    config = workdir_lib.saved_config(FLAGS.workdir)
    if config is None:
      raise app.UsageError(f'--mode=eval without --config needs {FLAGS.workdir}/config.json.')
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or config.distributed:
    if jax.config.jax_platforms in (None, '', 'cpu') and FLAGS.coordinator_address:
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  from histojax import train  # pylint: disable=g-import-not-at-top
  setup_console()
  train.train_and_evaluate(config, FLAGS.workdir, mode=FLAGS.mode, exit_on_signal=True)


def _config_spec():
  """The --config value as given (configs/x.py:arg), for the sweep's record."""
  for i, arg in enumerate(sys.argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return None


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  app.run(main)
