"""Where data is read from (HISTOJAX_DATA) and where derived files go (HISTOJAX_CACHE)."""
import contextlib
import fcntl
import os
import pathlib
import socket
import uuid

from histojax import errors


class DataError(errors.UserError, ValueError):
  """Bad or missing input data; the message names the file and what to do."""


def data_root() -> pathlib.Path:
  root = os.environ.get('HISTOJAX_DATA')
  if not root:
    raise DataError('HISTOJAX_DATA is not set: point it at the folder holding the datasets '
                    '(e.g. export HISTOJAX_DATA=/path/to/data with mnist/, glas/, ... inside).')
  return pathlib.Path(root).expanduser()


def dataset_dir(name: str, required_files=()) -> pathlib.Path:
  """Returns $HISTOJAX_DATA/<name>, failing at once (never downloading) if files are missing."""
  folder = data_root() / name
  missing = [f for f in required_files if not (folder / f).exists()]
  if not folder.is_dir() or missing:
    what = f'missing {", ".join(missing)}' if folder.is_dir() else 'folder does not exist'
    raise DataError(
        f'Dataset {name!r} not found at {folder} ({what}). histojax never downloads data: put '
        f'the release files there ({", ".join(required_files) or "see README"}) or set '
        f'HISTOJAX_DATA to the folder that holds {name}/.')
  return folder


def cache_root() -> pathlib.Path:
  """Folder for derived datasets; never inside HISTOJAX_DATA. Checked for writing only when
  something must be built there (store.prepare), so a prebuilt read-only cache works."""
  root = os.environ.get('HISTOJAX_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'histojax')
  return pathlib.Path(root).expanduser()


def check_writable(folder: pathlib.Path):
  """Creates `folder` and writes a probe there, or raises a DataError naming it."""
  probe = folder / f'.write_test_{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}'
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b'ok')
    probe.unlink(missing_ok=True)
  except OSError as e:
    raise DataError(f'Cannot write derived data to {folder} ({e.strerror or e}): set '
                    'HISTOJAX_CACHE to a writable folder with free space.') from e


@contextlib.contextmanager
def file_lock(path: pathlib.Path, enabled=True):
  """An exclusive flock on `path` for the duration (blocking); a no-op where flock is not
  supported or the folder is read-only."""
  if not enabled:
    yield
    return
  with open(path, 'a+', encoding='utf-8') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # file system without flock
      yield
      return
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
