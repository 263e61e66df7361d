"""Shared test helpers. Tests run on the real data under $HISTOJAX_DATA; in CI (CI=true) its
absence is a failure, elsewhere a skip."""
import functools
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def require_data(name):
  root = os.environ.get('HISTOJAX_DATA')
  if root and (pathlib.Path(root) / name).is_dir():
    return pathlib.Path(root) / name
  message = f'dataset {name!r} not found under HISTOJAX_DATA={root!r}'
  if os.environ.get('CI', '').lower() == 'true':
    pytest.fail(message + ' (CI=true: data must be present)')
  pytest.skip(message)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
  if not os.environ.get('HISTOJAX_CACHE'):
    monkeypatch.setenv('HISTOJAX_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


def launch(args, *, devices=1, env=None, **popen):
  """Starts launch.py in its own process group (so grain workers die with it)."""
  full_env = dict(os.environ, **(env or {}))
  full_env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  full_env['JAX_PLATFORMS'] = 'cpu'
  return subprocess.Popen([sys.executable, str(ROOT / 'launch.py'), *args], cwd=ROOT,
                          env=full_env, start_new_session=True, **popen)


def kill_group(proc, sig=signal.SIGKILL):
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def kill_main(proc, grace=15.0):
  """kill -9 of the main process only, as the OOM killer does: its grain workers exit by
  themselves and the resource tracker unlinks their shared memory; the group is killed after
  `grace` seconds only as a backstop."""
  proc.kill()
  proc.wait()
  deadline = time.time() + grace
  while time.time() < deadline:
    try:
      os.killpg(proc.pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.1)
  kill_group(proc)


@functools.lru_cache(maxsize=None)
def glas_records():
  from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top
  return glas.records()


@functools.lru_cache(maxsize=None)
def crc_records():
  from histojax.data.sources import crchisto  # pylint: disable=g-import-not-at-top
  return crchisto.records()
