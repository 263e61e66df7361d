"""A sweep worker: asks the study for trials and runs each as an ordinary histojax run.

Interrupted trials (the worker killed, its machine lost, SIGTERM) are failed and retried as a
new trial with the same parameters (`retry_of` the old number), which resumes from the old
run's newest checkpoint when its folder is on this machine and its process is gone.
"""
import functools
import logging
import os
import pathlib
import socket
import time

from histojax import errors, stopping, sweep_report, sweep_spec, sweep_storage, writers

PRUNER_STEPS_PER_EPOCH = 100  # a trial reports val/<m> at step round(100 * epoch)


class TrialTakenOver(Exception):
  """This worker's trial was failed by another worker (its heartbeat looked stale) and retried
  elsewhere: the run stops, and its result is not recorded."""


def retry(study, trial):
  """The same parameters again as a new WAITING trial, `retry_of` the old number, with the
  pruner's intermediate values and the sampler's bookkeeping (a grid point keeps its id).
  Also Optuna's callback for a trial whose heartbeat stopped."""
  import optuna  # pylint: disable=g-import-not-at-top
  attrs = {k: v for k, v in trial.user_attrs.items() if k in ('enqueued',)}
  attrs['retry_of'] = trial.number
  system = {k: v for k, v in trial.system_attrs.items() if k in ('grid_id', 'search_space')}
  study.add_trial(optuna.create_trial(
      state=optuna.trial.TrialState.WAITING, params=trial.params,
      distributions=trial.distributions, user_attrs=attrs, system_attrs=system,
      intermediate_values=trial.intermediate_values))
  logging.warning('Sweep: trial %d was interrupted; its parameters run again as a new trial.',
                  trial.number)


def _id(trial):
  """The storage's id of a trial (Optuna has no public accessor)."""
  return trial._trial_id  # pylint: disable=protected-access


def budget_used(trials):
  """Trials that count towards num_trials: all but interrupted ones that were retried."""
  retried = {t.user_attrs['retry_of'] for t in trials if 'retry_of' in t.user_attrs}
  return sum(1 for t in trials if t.number not in retried)


@functools.cache
def machine():
  """This machine and process namespace: hostname, boot id and pid namespace (containers
  sharing a hostname do not see each other's pids)."""
  def read(f):
    try:
      return f()
    except OSError:
      return ''
  boot = read(lambda: pathlib.Path('/proc/sys/kernel/random/boot_id').read_text().strip())
  return f'{socket.gethostname()}|{boot}|{read(lambda: os.readlink("/proc/self/ns/pid"))}'


def process_key(pid):
  """'pid:start' (its start time in clock ticks since boot, Linux /proc): one process, even
  after its pid is reused."""
  try:
    stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    return f'{pid}:{stat.rsplit(")", 1)[1].split()[19]}'
  except (OSError, IndexError):
    return f'{pid}:'


def alive(key):
  """Is the process of a process_key still running?"""
  if not key:
    return False
  pid = int(str(key).split(':')[0])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return process_key(pid) == key


class Worker:
  """One process working on the study: asks for trials and runs them, one at a time."""

  def __init__(self, study, storage, config, sweep, metric, workdir, url, exit_on_signal):
    self.study, self.storage, self.config, self.sweep = study, storage, config, sweep
    self.metric, self.workdir, self.url = metric, workdir, url
    self.exit_on_signal = exit_on_signal
    self.ran_trials = False
    self.distributions = sweep_spec.distributions(sweep)
    self.received = lambda: []  # signals since loop() started (stopping.recorded_stops)

  def _local_and_alive(self, t):
    return t.user_attrs.get('machine') == machine() and alive(t.user_attrs.get('process'))

  def _fail_interrupted(self):
    """Under the study lock. Running trials whose worker is gone: on this machine a dead
    process (at once); elsewhere a heartbeat stopped for GRACE_S (Optuna). Each is failed and
    retried. Also trials failed as interrupted whose retry was never added (a kill between
    the two)."""
    import optuna  # pylint: disable=g-import-not-at-top
    running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
      if t.user_attrs.get('machine') == machine() and not alive(t.user_attrs.get('process')):
        self.storage.set_trial_user_attr(_id(t), 'interrupted', True)
        self.storage.set_trial_state_values(_id(t), optuna.trial.TrialState.FAIL)
      elif self._local_and_alive(t):  # busy (a long compile, a locked database): not stale
        self.storage.record_heartbeat(_id(t))
    optuna.storages.fail_stale_trials(self.study)  # other machines': retried by its callback
    trials = self.study.get_trials(deepcopy=False)
    retried = {t.user_attrs['retry_of'] for t in trials if 'retry_of' in t.user_attrs}
    for t in trials:
      if (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get('interrupted')
          and t.number not in retried):
        retry(self.study, t)

  def _next_trial(self):
    import optuna  # pylint: disable=g-import-not-at-top
    with sweep_storage.study_lock(self.url, self.study.study_name):
      if self.received():
        return None
      self._fail_interrupted()
      trials = self.study.get_trials(deepcopy=False)
      waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
      if not waiting and budget_used(trials) >= int(self.study.user_attrs['num_trials']):
        return None
      trial = self.study.ask(self.distributions)
      # At once, under the lock: a trial without its owner's marks could never be recovered.
      self.storage.record_heartbeat(_id(trial))
      for key, value in (('host', socket.gethostname()), ('machine', machine()),
                         ('process', process_key(os.getpid())),
                         ('workdir', str(self.workdir / 'trials' / str(trial.number)))):
        trial.set_user_attr(key, value)
      return trial

  def loop(self):
    """Runs trials until the study has its num_trials. False when stopped by a signal: one
    during a trial saves it (the re-run retries it from there); no new trial starts after
    one. A second signal between trials ends the process at once."""
    with stopping.recorded_stops() as received:
      self.received = received
      while (trial := self._next_trial()) is not None:
        self.ran_trials = True
        if not self.run_trial(trial):
          return False
      if received():
        logging.info('%s: sweep stopped between trials; re-run the same command to go on.',
                     received()[0])
        return False
    return True

  def run_trial(self, trial):
    """Runs one trial and records its state. False when stopped by a signal."""
    import optuna  # pylint: disable=g-import-not-at-top
    from histojax import train  # pylint: disable=g-import-not-at-top
    number, params = trial.number, dict(trial.params)
    trial_dir = self.workdir / 'trials' / str(number)
    resumed = self._take_over(trial, trial_dir)
    config = sweep_spec.apply(self.config, params, f'trial {number}')
    config.final_test = False
    logging.info('Sweep trial %d%s: %s', number,
                 f' (retry of {trial.user_attrs["retry_of"]}'
                 f'{", resumed at step %d" % resumed if resumed else ""})'
                 if 'retry_of' in trial.user_attrs else '',
                 ' '.join(f'{k}={v!r}' for k, v in params.items()))
    key = f'val/{self.metric}'

    def on_eval(step, epoch, val):
      # The pruner compares trials at equal steps: hundredths of an epoch, which mean the
      # same training in trials of any batch size (a training step does not).
      try:
        trial.report(val[key], round(epoch * PRUNER_STEPS_PER_EPOCH))
      except optuna.exceptions.UpdateFinishedTrialError as e:
        raise TrialTakenOver(str(e)) from e
      if trial.should_prune():
        raise optuna.TrialPruned(f'{key} {val[key]:.4f} at step {step} (epoch {epoch:.2f})')

    state, value, attrs = optuna.trial.TrialState.FAIL, None, {}
    started = time.time()
    try:
      if self.received():  # a signal while this trial was being set up
        self._interrupted(trial)
        return False
      with writers.cost_from_now() as cost, \
          sweep_storage.Heartbeat(self.storage, _id(trial)):
        try:
          results = train.train_and_evaluate(config, trial_dir, 'train', on_eval=on_eval,
                                             exit_on_signal=self.exit_on_signal)
        finally:
          attrs['cpu_seconds'] = cost.cpu_seconds()
      if results is None:  # stopped by SIGTERM/SIGINT, its state saved: retried on re-run
        trial.set_user_attr('cpu_seconds', attrs['cpu_seconds'])
        self._interrupted(trial)
        logging.info('Sweep stopped during trial %d; re-run the same command to go on.',
                     number)
        return False
      value = results['val'][self.metric]
      if value != value or abs(value) == float('inf'):
        attrs['error'] = f'final_val/{self.metric} is {value}'
      else:
        state = optuna.trial.TrialState.COMPLETE
    except optuna.TrialPruned as e:
      state, attrs['pruned'] = optuna.trial.TrialState.PRUNED, str(e)
    except TrialTakenOver:
      logging.warning('Sweep trial %d was failed and retried by another worker (its heartbeat '
                      'looked stale); its result here is not recorded.', number)
      return True
    except Exception as e:  # pylint: disable=broad-except
      attrs['error'] = f'{type(e).__name__}: {e}'[:500]
      logging.warning('Sweep trial %d failed: %s: %s', number, type(e).__name__, e,
                      exc_info=not isinstance(e, errors.UserError))
    except BaseException:  # KeyboardInterrupt outside the train loop's own handling
      self._interrupted(trial)
      raise
    attrs['wall_seconds'] = time.time() - started
    try:
      for k, v in attrs.items():
        trial.set_user_attr(k, v)
      self._tell(trial, state, value)
    except optuna.exceptions.UpdateFinishedTrialError:
      logging.warning('Sweep trial %d was failed and retried by another worker meanwhile; '
                      'its result here is not recorded.', number)
      return True
    logging.info('Sweep trial %d: %s%s', number, state.name.lower(),
                 f' final_val/{self.metric} {value:.4f}' if value is not None else '')
    return True

  def _tell(self, trial, state, value):
    import optuna  # pylint: disable=g-import-not-at-top
    try:
      if state == optuna.trial.TrialState.COMPLETE:
        self.study.tell(trial, value)
      else:
        self.study.tell(trial, state=state)
    except RuntimeError as e:
      # GridSampler stops the study after its last point, which Optuna allows only inside
      # Study.optimize; the trial is recorded by then. Our own budget ends the sweep.
      if 'supposed to be invoked inside an objective' not in str(e):
        raise

  def _interrupted(self, trial):
    """Failed as interrupted and retried (from its saved checkpoint), under the study lock.
    The mark comes first: a kill between the steps leaves a trial the next worker retries."""
    import optuna  # pylint: disable=g-import-not-at-top
    with sweep_storage.study_lock(self.url, self.study.study_name):
      try:
        trial.set_user_attr('interrupted', True)
        self.storage.set_trial_state_values(_id(trial), optuna.trial.TrialState.FAIL)
      except optuna.exceptions.UpdateFinishedTrialError:
        return  # failed by another worker already, which retried it
      retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])

  def _take_over(self, trial, trial_dir):
    """A retried trial continues the interrupted one's run when that folder is here and its
    process is gone: the folder becomes this trial's. Returns the step it resumes from."""
    old = trial.user_attrs.get('retry_of')
    if old is None or trial_dir.exists():
      return None
    previous = self.study.get_trials(deepcopy=False)[old]
    old_dir = trial_dir.parent / str(old)
    if (previous.user_attrs.get('machine') != machine()
        or alive(previous.user_attrs.get('process')) or not old_dir.is_dir()):
      return None
    steps = sorted(int(p.name) for p in (old_dir / 'checkpoints').glob('[0-9]*')
                   if p.name.isdigit())
    if not steps:
      return None
    old_dir.rename(trial_dir)
    trial.set_user_attr('resumed_from_step', steps[-1])
    return steps[-1]

  def finish_if_last(self, test_best):
    """Under the study lock, when no trial is left running or waiting: the best trial's test
    parts (`test_best`, once) and W/sweep.md. Returns the best trial's summary; None when
    others still run (the last of them writes it); 'again' when retries wait to be run."""
    import optuna  # pylint: disable=g-import-not-at-top
    with sweep_storage.study_lock(self.url, self.study.study_name):
      self._fail_interrupted()
      if self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        return 'again'
      running = self.study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,))
      if running:
        logging.info('Sweep: %d trial(s) still running elsewhere; the last worker writes '
                     'sweep.md.', len(running))
        return None
      # Workers finishing together: the first writes; the others see the study unchanged
      # since. A run that ran no trial (the command again over a finished study) writes.
      finished = [[t.number, t.state.name] for t in self.study.get_trials(deepcopy=False)]
      if self.ran_trials and self.study.user_attrs.get('reported') == finished:
        logging.info('Sweep: another worker wrote the report of this study (%s).',
                     self.study.user_attrs.get('reported_by'))
        return None
      best = test_best(self.study, self.config)
      path = sweep_report.write(self.study, self.workdir, sweep_storage.redact(self.url),
                                self.metric)
      self.study.set_user_attr('reported', finished)
      self.study.set_user_attr('reported_by', f'{socket.gethostname()}:{path}')
    logging.info('Sweep report: %s', path)
    return best
