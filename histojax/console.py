"""The console: third-party log lines that do not concern the user demoted to DEBUG (one place
for them; `--verbosity=1` shows them), for every entry point (launch.py, histojax.data.show)."""
import logging
import os
import sys


# Third-party log lines that do not concern the user, demoted to DEBUG (--verbosity=1 shows
# them): orbax notes that a read-only checkpoint folder is read only (eval, predict).
_ORBAX_NOTES = ('CheckpointManagerOptions.read_only=True', 'Given directory is read only',
                'Write requested but enable_write=false',
                'Update requested but enable_write=false')


def _third_party_noise(record):
  message = record.msg if isinstance(record.msg, str) else ''
  if '/orbax/' in record.pathname:  # it logs every file it writes at INFO
    return record.levelno < logging.WARNING or message.startswith(_ORBAX_NOTES)
  if '/tensorflow_datasets/' in record.pathname:  # it narrates building the local cache, and
    # warns that a folder not built yet has no dataset_info.json
    return record.levelno < logging.WARNING or (message.startswith('Variant folder') and
                                                 'has no' in message)
  if record.name == 'jax._src.xla_bridge':  # every start probes for a TPU and GPUs
    return record.levelno < logging.WARNING and message.startswith('Unable to initialize')
  return False


class _Demote(logging.Filter):
  def filter(self, record):
    if not getattr(record, 'histojax_demoted', False):
      if record.levelno <= logging.DEBUG or not _third_party_noise(record):
        return True
      record.levelno, record.levelname, record.histojax_demoted = logging.DEBUG, 'DEBUG', True
    return logging.getLogger().isEnabledFor(logging.DEBUG)


_DEMOTE = _Demote()


def quiet_third_party():
  """One place for third-party console noise: log lines that do not concern the user become
  DEBUG; tfds's download banners (histojax never downloads: tfds builds the cache from local
  files) become DEBUG lines and its progress bars go when stderr is no terminal (a log file
  would keep their escape codes); the multiprocessing resource tracker's shutdown note that
  it cleaned up the grain workers' shared memory is dropped."""
  for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
    if _DEMOTE not in handler.filters:
      handler.addFilter(_DEMOTE)
  # The tracker is a child process started later: it reads this from its environment.
  note = 'ignore:resource_tracker:UserWarning'
  if note not in os.environ.get('PYTHONWARNINGS', ''):
    os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [os.environ.get('PYTHONWARNINGS'),
                                                          note]))
  try:
    from tensorflow_datasets.core import dataset_builder  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  if not sys.stderr.isatty():
    tqdm_utils.disable_progress_bar()
  builder = dataset_builder.DatasetBuilder
  if hasattr(builder, '_log_download_bytes'):
    builder._log_download_bytes = lambda self: logging.debug(  # pylint: disable=protected-access
        'tfds: preparing %s in %s', self.name, self.data_dir)
  if hasattr(builder, '_log_download_done'):
    builder._log_download_done = lambda self: logging.debug(  # pylint: disable=protected-access
        'tfds: prepared %s in %s', self.name, self.data_dir)


def setup_console():
  """INFO lines (DEBUG too with --verbosity=1), without third-party noise."""
  root = logging.getLogger()
  if not root.level or root.level > logging.DEBUG:
    root.setLevel(logging.INFO)
  quiet_third_party()
