"""Reproduced process fault, fixed: `kill -9` of the training process alone (what the OOM killer
does) left its grain workers and the multiprocessing resource tracker running as orphans
(PPID 1), holding their memory and /dev/shm segments. Workers now exit with their parent."""
import os
import pathlib
import signal
import subprocess
import sys
import time

from conftest import ROOT, kill_group, launch, require_data

SHM = pathlib.Path('/dev/shm')


def _session(sid):
  """{pid: (ppid, cmdline)} of the live processes in session `sid` (zombies hold nothing and
  are init's to reap)."""
  found = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      stat = (pathlib.Path('/proc') / entry / 'stat').read_text()
      cmdline = (pathlib.Path('/proc') / entry / 'cmdline').read_bytes()
    except OSError:  # exited while we looked
      continue
    state, ppid, _, session = stat[stat.rindex(')') + 2:].split()[:4]
    if int(session) == sid and state not in 'ZX':
      found[int(entry)] = (int(ppid), cmdline.replace(b'\0', b' ').decode(errors='replace'))
  return found


def _wait_session_gone(sid, timeout):
  deadline = time.time() + timeout
  while _session(sid) and time.time() < deadline:
    time.sleep(0.1)
  return _session(sid)


def _shm():
  return set(os.listdir(SHM)) if SHM.is_dir() else set()


def test_workers_and_shared_memory_go_when_main_process_is_sigkilled(tmp_path):
  require_data('mnist')
  before = _shm()
  log = tmp_path / 'run.log'
  with open(log, 'wb') as out:
    proc = launch([f'--config={ROOT}/configs/mnist_cnn.py:smoke', f'--workdir={tmp_path / "w"}',
                   '--config.total_steps=100000', '--config.data.workers=2'],
                  stdout=out, stderr=subprocess.STDOUT)
  try:
    # Kill only once both workers run and batches are in flight through shared memory.
    deadline = time.time() + 180
    while True:
      assert proc.poll() is None, log.read_text()[-3000:]
      assert time.time() < deadline, ('no workers/batches in time', _session(proc.pid))
      workers = [pid for pid, (ppid, cmd) in _session(proc.pid).items()
                 if ppid == proc.pid and 'spawn_main' in cmd]
      if len(workers) == 2 and any(n.startswith('psm_') for n in _shm() - before):
        break
      time.sleep(0.2)

    os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
    proc.wait()
    left = _wait_session_gone(proc.pid, timeout=10)
    assert not left, f'orphans of the killed run: {left}'
    # The resource tracker unlinks the segments and semaphores as its last holders exit.
    deadline = time.time() + 5
    while _shm() - before and time.time() < deadline:
      time.sleep(0.1)
    assert not _shm() - before, f'/dev/shm entries left behind: {sorted(_shm() - before)}'
  finally:
    # SIGTERM first: the resource tracker ignores it and, outliving the rest, still unlinks.
    kill_group(proc, signal.SIGTERM)
    if _wait_session_gone(proc.pid, timeout=10):
      kill_group(proc)
    proc.wait()


_CHILD = """
import sys, time
from histojax.data import pipeline
pipeline._exit_with_parent(int(sys.argv[1]), 0, 1)
print('ready', flush=True)
time.sleep(60)
"""

_MIDDLE = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == 'ready'
print(child.pid, flush=True)
time.sleep(60)
"""


def test_exit_with_parent_ends_the_child_of_a_killed_parent():
  """The worker_init_fn by itself, without grain: a process running it outlives its SIGKILLed
  parent by at most about one poll interval."""
  middle = subprocess.Popen([sys.executable, '-c', _MIDDLE, _CHILD], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
  try:
    child = int(middle.stdout.readline())
    assert child in _session(middle.pid)
    os.kill(middle.pid, signal.SIGKILL)
    middle.wait()
    killed = time.time()
    assert not _wait_session_gone(middle.pid, timeout=5)
    assert time.time() - killed < 2
  finally:
    kill_group(middle)
    middle.wait()
