"""Ctrl-C and SIGTERM in --mode=train: honoured within seconds wherever the run is, saving what
is new.

The Python handler only records the request (a second signal kills at once, unsaved): the
train loop saves at the next step boundary, and an evaluation stops between examples (the
`progress` callable it gets raises errors.StopRequested). Python runs handlers only between
bytecodes of the main thread, though: a signal that arrives while that thread is inside XLA
compilation or another long C++ call would wait for the call to end (minutes, on a CPU). So a
watcher thread reads the signal numbers that the C-level handler writes to a pipe
(`signal.set_wakeup_fd`) the moment they arrive. When nothing is unsaved (no train step has
completed since the last save or restore) and the main thread has not taken the stop in hand
within a short grace, the watcher ends the run itself: one log line, the grain workers
killed, exit status 0. With unsaved state it does nothing and leaves the stop to the loop.

One process only: the hosts of a multi-host run must agree on a stop before the collective
save (the loop's allgather at log steps), so there the watcher is not started.
"""
import contextlib
import logging
import os
import pathlib
import select
import signal
import sys
import threading
import time

from histojax import writers

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 2.0  # the main thread may stop by itself within it (it was between bytecodes)
RECEIVED = []  # every SIGTERM/SIGINT that a handler of this module saw, in order


@contextlib.contextmanager
def recorded_stops():
  """Between the runs of one process (a sweep's trials): SIGTERM and SIGINT are recorded
  instead of ending the process (a StopGuard takes over during each run, and records them
  too); a second one ends it at once. Yields a callable: the signals received since
  entering, so that the caller starts no new run. Main thread only."""
  start = len(RECEIVED)
  old = {sig: signal.getsignal(sig) for sig in SIGNALS}

  def record(signum, frame):
    del frame
    if len(RECEIVED) > start:  # a second one: stop now, as StopGuard does
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    RECEIVED.append(signal.Signals(signum).name)
  for sig in SIGNALS:
    signal.signal(sig, record)
  try:
    yield lambda: RECEIVED[start:]
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)


class StopGuard:
  """Installs the handlers (and the watcher) on enter, restores them on exit.

  The main thread tells it what it does: `unsaved = True` after each train step, `saving(step)`
  around each checkpoint write, `phase` for the exit line, and `take()` once it handles a
  stop itself (the watcher then stands down).
  """

  def __init__(self, *, enabled=True, watch=True, grace=GRACE_S):
    self.enabled, self.watch, self.grace = enabled, watch and enabled, grace
    self.requested = []      # signal names, as the main thread's handler saw them
    self.phase = 'start-up/compilation'
    self.saved_step = 0      # the newest step saved or restored
    self.unsaved = False     # a train step has completed since then
    self._lock = threading.Lock()  # held while saving: the watcher never exits mid-save
    self._taken = False
    self._handlers = {}
    self._pipe = None
    self._thread = None
    self._old_wakeup_fd = -1

  # ------------------------------------------------------------------ main thread
  def take(self):
    """The main thread handles the stop (saves, logs, returns): the watcher stands down."""
    self._taken = True

  @contextlib.contextmanager
  def saving(self, step):
    """Around a checkpoint write: the watcher waits for it; afterwards nothing is unsaved."""
    with self._lock:
      yield
      self.saved_step, self.unsaved = step, False

  def _on_signal(self, signum, frame):
    del frame
    if self.requested:  # a second Ctrl-C / SIGTERM: stop now, without saving
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    self.requested.append(signal.Signals(signum).name)
    RECEIVED.append(self.requested[-1])

  def __enter__(self):
    if not self.enabled:
      return self
    self._handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
      signal.signal(sig, self._on_signal)
    if self.watch:
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)  # the C handler must never block on a full pipe
      self._pipe = (read_fd, write_fd)
      self._old_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
      self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                      name='histojax-stop-watcher', daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    if self._pipe is not None:
      signal.set_wakeup_fd(self._old_wakeup_fd)  # first: no signal byte into a closed fd
      os.write(self._pipe[1], b'\0')  # 0 is no signal number: the watcher returns
      self._thread.join(timeout=10)
      for fd in self._pipe:
        os.close(fd)
      self._pipe = self._thread = None
    for sig, handler in self._handlers.items():
      signal.signal(sig, handler)
    self._handlers = {}

  # ---------------------------------------------------------------- watcher thread
  def _watch(self, read_fd):
    seen, deadline = [], None
    while True:
      timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
      readable, _, _ = select.select([read_fd], [], [], timeout)
      if readable:
        data = os.read(read_fd, 64)
        if not data or 0 in data:
          return
        new = [signal.Signals(b).name for b in data if b in SIGNALS]
        seen += new
        if len(seen) >= 2 and new:  # as the Python handler does, for a main thread in C++
          self._exit(f'{seen[-1]} again: stopping now, without saving.',
                     128 + signal.Signals[seen[-1]])
        if new and deadline is None:
          deadline = time.monotonic() + self.grace
        continue
      deadline = None
      with self._lock:
        if self._taken or self.unsaved:
          continue  # the loop saves at the next step boundary or between eval examples
        self._exit(f'{seen[0]} during {self.phase}: nothing new since step '
                   f'{self.saved_step} to save; exiting.', 0)

  @staticmethod
  def _exit(message, status):
    logging.info('%s', message)
    kill_children()
    for handler in logging.getLogger().handlers:
      handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access


def kill_children():
  """SIGKILLs this process's child processes (grain workers), except multiprocessing's
  resource tracker: it unlinks the workers' shared memory once every holder has gone."""
  for pid in writers.child_pids():
    try:
      if b'resource_tracker' in pathlib.Path(f'/proc/{pid}/cmdline').read_bytes():
        continue
      os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError):
      continue  # exited meanwhile
