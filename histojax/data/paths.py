"""Where data is read from (HISTOJAX_DATA) and where derived files go (HISTOJAX_CACHE)."""
import os
import pathlib

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
  """Writable folder for derived datasets; never inside HISTOJAX_DATA."""
  root = os.environ.get('HISTOJAX_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'histojax')
  path = pathlib.Path(root).expanduser()
  probe = path / f'.write_test_{os.getpid()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b'ok')
    probe.unlink()
  except OSError as e:
    raise DataError(f'Cannot write derived data to {path} ({e.strerror or e}): set '
                    'HISTOJAX_CACHE to a writable folder with free space.') from e
  return path
