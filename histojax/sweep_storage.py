"""Where a sweep's study lives, and the lock that makes asking for a trial exact.

SQLite (the default, W/study.db) for one machine; PostgreSQL (`--storage=postgresql://...`)
for several processes or machines on one study. Workers take the study lock (a file lock
beside the SQLite file; a PostgreSQL advisory lock) only around counting trials and asking
for the next one, so that N workers never start more trials than the sweep asks for.
"""
import contextlib
import fcntl
import hashlib
import logging
import pathlib
import re
import threading

HEARTBEAT_S = 20   # a running trial's worker writes a heartbeat this often
GRACE_S = 120      # a trial without a heartbeat for this long is interrupted (machine lost)


def default_url(workdir):
  return f'sqlite:///{pathlib.Path(workdir).resolve() / "study.db"}'


def redact(url):
  """The URL without its password, for logs and sweep.md."""
  return re.sub(r'(://[^:/@]+):[^@]*@', r'\1:***@', url)


def open_storage(url, failed_trial_callback=None):
  """Optuna's RDBStorage with heartbeats (a worker killed with its machine leaves a trial
  that becomes failed, and retried, after GRACE_S)."""
  import optuna  # pylint: disable=g-import-not-at-top
  engine_kwargs = {}
  if url.startswith('sqlite'):
    # Several local workers write one file: wait for its lock instead of failing at once.
    engine_kwargs = {'connect_args': {'timeout': 120}}
  else:
    engine_kwargs = {'pool_pre_ping': True}
  return optuna.storages.RDBStorage(
      url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
      heartbeat_stale_trial_callback=failed_trial_callback)


@contextlib.contextmanager
def study_lock(url, study_name):
  """Held while counting trials and asking for one: one worker at a time, on any machine."""
  if url.startswith('sqlite:///'):
    path = pathlib.Path(url[len('sqlite:///'):]).with_suffix('.lock')
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a', encoding='utf-8') as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)
  elif url.startswith('postgresql'):
    import sqlalchemy  # pylint: disable=g-import-not-at-top
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], 'big', signed=True)
    # Autocommit: a session idle inside a transaction may be ended by the server
    # (idle_in_transaction_session_timeout), and the lock with it.
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      isolation_level='AUTOCOMMIT')
    with engine.connect() as connection:
      connection.execute(sqlalchemy.text('SELECT pg_advisory_lock(:k)'), {'k': key})
      try:
        yield
      finally:
        connection.execute(sqlalchemy.text('SELECT pg_advisory_unlock(:k)'), {'k': key})
    engine.dispose()
  else:
    logging.warning('No study lock for %s: with several workers a sweep may run a trial or '
                    'two more than num_trials (SQLite and PostgreSQL have one).', redact(url))
    yield


class Heartbeat:
  """Records the running trial's heartbeat every HEARTBEAT_S, in a thread, while entered."""

  def __init__(self, storage, trial_id):
    self.storage, self.trial_id = storage, trial_id
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._beat, daemon=True, name='sweep-heartbeat')

  def _beat(self):
    while not self.stop.is_set():
      try:
        self.storage.record_heartbeat(self.trial_id)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Sweep heartbeat of trial id %d failed: %s', self.trial_id, e)
      self.stop.wait(HEARTBEAT_S)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stop.set()
    self.thread.join()
