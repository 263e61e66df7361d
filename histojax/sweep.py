r"""Hyperparameter sweeps with Optuna over any config field: resumable, pruned, parallel.

  python launch.py --mode=sweep --config=configs/<task>.py[:ARG] --sweep=sweeps/<name>.py[:ARG]
                   --workdir=W [--storage=URL] [--sweep_workers=N] [--study_name=NAME]

Each trial is an ordinary run in W/trials/<n>/ with final_test=False: its final report is
validation-only, and it reports `val/<m>` to the pruner after every evaluation. When the
study has its trials, the last worker to finish scores the best trial's test parts once
(`--mode=eval` on its workdir) and writes W/sweep.md (histojax/sweep_report.py).

Resume: the study (W/study.db, or the --storage database) remembers every trial. Re-running
the command goes on where it stopped: a trial interrupted by a kill (its worker's process is
gone, or its heartbeat stopped for histojax/sweep_storage.GRACE_S) is marked failed and
retried as a new trial with the same parameters, `retry_of` its number, which resumes from
the interrupted trial's newest checkpoint when that is on this machine. A trial that raises
(a bad value, a diverged loss) is recorded failed with its error and the sweep goes on.
"""
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time
import warnings

from histojax import errors, stopping, sweep_report, sweep_spec, sweep_storage, writers
from histojax import workdir as workdir_lib


PRUNER_STEPS_PER_EPOCH = 100  # a trial reports val/<m> at step round(100 * epoch)


class StudyMismatch(errors.UserError):
  """The study in the storage was made by another sweep or config."""


def run(config, config_spec, sweep_path_arg, workdir, storage_url=None, workers=1,
        study_name=None, argv=None, exit_on_signal=False):
  """The `--mode=sweep` entry point. Returns the study's best {'trial', 'value', 'params',
  'test'} or None. `argv` is the command line (for the workers --sweep_workers starts, and
  the best trial's command in sweep.md); exit_on_signal as in train.train_and_evaluate."""
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  argv = list(argv if argv is not None else sys.argv)
  sweep, path = sweep_spec.load(sweep_path_arg)
  metric_names = _metric_names(config)
  metric, direction = sweep_spec.check(sweep, path, config, metric_names)
  url = storage_url or sweep_storage.default_url(workdir)
  name = study_name or path.stem + (f':{sweep_path_arg.partition(":")[2]}'
                                    if ':' in str(sweep_path_arg) else '')
  if workers > 1:
    return _start_workers(argv, workers)
  study, storage = _open_study(config, config_spec, sweep, metric, direction, url, name, argv)
  worker = Worker(study, storage, config, sweep, metric, workdir, url, exit_on_signal)
  if not worker.loop():
    return None
  return worker.finish_if_last()


def _metric_names(config):
  from histojax import tasks  # pylint: disable=g-import-not-at-top
  from histojax.data import datasets  # pylint: disable=g-import-not-at-top
  splits = datasets.get_splits(config)
  if not len(splits.val):
    raise sweep_spec.SweepError('A sweep selects on validation data, and this config has none '
                                '(data.val_fraction / data.val_size is 0).')
  return tasks.get_task(config, splits.info).metric_names()


def _start_workers(argv, n):
  """`--sweep_workers=N`: N worker processes of this very command on one study."""
  args = [a for a in argv[1:] if not a.startswith('--sweep_workers')] + ['--sweep_workers=1']
  script = pathlib.Path(argv[0]).resolve()
  logging.info('Starting %d sweep workers: %s %s', n, script.name, ' '.join(args))
  procs = [subprocess.Popen([sys.executable, str(script), *args]) for _ in range(n)]
  codes = [p.wait() for p in procs]
  if any(codes):
    raise errors.UserError(f'Sweep workers exited with status {codes}; re-run the same '
                           'command to go on.')
  return None


def _open_study(config, config_spec, sweep, metric, direction, url, name, argv):
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  # Heartbeats and the figures are "experimental" in Optuna: said once per call otherwise.
  warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
  # Optuna expects heartbeats from Study.optimize; Worker.run_trial records them itself.
  warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used')
  samplers = {
      'tpe': lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
      'random': lambda seed: optuna.samplers.RandomSampler(seed=seed),
      'grid': lambda seed: optuna.samplers.GridSampler(sweep_spec.grid(sweep, 'sweep'),
                                                       seed=seed)}
  p = sweep.pruner
  pruner = {
      'median': lambda: optuna.pruners.MedianPruner(n_startup_trials=p['startup_trials'],
                                                    n_warmup_steps=p['warmup_steps']),
      'hyperband': lambda: optuna.pruners.HyperbandPruner(
          reduction_factor=p['reduction_factor']),
      'successive_halving': lambda: optuna.pruners.SuccessiveHalvingPruner(
          reduction_factor=p['reduction_factor']),
      'none': optuna.pruners.NopPruner}[p['name']]()
  record = {'config': config_spec, 'metric': f'final_val/{metric}', 'direction': direction,
            'space': [dict(x) for x in sweep.space],
            'config_values': _comparable(config),
            'command': _command(argv)}
  with sweep_storage.study_lock(url, name):
    # Under the lock: the first worker creates the tables, which two at once cannot.
    storage = sweep_storage.open_storage(url, failed_trial_callback=retry)
    exists = name in optuna.study.get_all_study_names(storage)
    # The worker that creates the study samples from sweep.seed (a one-worker sweep is
    # reproducible); any other worker or re-run mixes in its process and the trials so far,
    # so that it does not draw the same points again.
    seed = sweep.seed if not exists else hash(
        (sweep.seed, os.getpid(), len(optuna.load_study(study_name=name, storage=storage)
                                      .get_trials(deepcopy=False)))) % 2**31
    study = optuna.create_study(study_name=name, storage=storage,
                                sampler=samplers[sweep.sampler](seed), pruner=pruner,
                                direction=direction, load_if_exists=True)
    saved = study.user_attrs
    if not saved:
      for k, v in record.items():
        study.set_user_attr(k, v)
      points = [dict(x) for x in sweep.enqueue]
      if sweep.enqueue_defaults:
        values = workdir_lib.flatten(config.to_dict())
        points.insert(0, {x['key']: values[x['key']] for x in sweep.space})
      for point in points:
        study.enqueue_trial(point, user_attrs={'enqueued': True})
    else:
      differ = [k for k in ('config', 'metric', 'direction', 'space', 'config_values')
                if json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(record[k]))]
      if differ:
        raise StudyMismatch(
            f'Study {name!r} in {sweep_storage.redact(url)} was made by another sweep or '
            f'config ({", ".join(differ)} differ). Start its own command again, or use another '
            '--workdir (SQLite) or --study_name (PostgreSQL).')
    study.set_user_attr('num_trials', int(sweep.num_trials))  # a re-run may extend the study
  return study, storage


def _comparable(config):
  """The config's values that shape a trial (run-time keys may differ between machines)."""
  flat = workdir_lib.flatten(json.loads(config.to_json()))
  return {k: v for k, v in sorted(flat.items()) if workdir_lib.kind(k) != 'runtime'}


def _command(argv):
  """The sweep's command without the sweep flags: the start of the best trial's command."""
  drop = ('--mode', '--sweep', '--storage', '--study_name', '--workdir')
  kept = [a for a in argv[1:] if not a.startswith(drop)]
  return ' '.join(['python launch.py', *kept])


def retry(study, trial):
  """Failed-trial callback (Optuna calls it for a trial whose heartbeat stopped; histojax for
  one whose process is gone): the same parameters again as a new trial, `retry_of` the old
  number, carrying the pruner's intermediate values."""
  import optuna  # pylint: disable=g-import-not-at-top
  attrs = {k: v for k, v in trial.user_attrs.items() if k in ('enqueued',)}
  attrs['retry_of'] = trial.number
  study.add_trial(optuna.create_trial(
      state=optuna.trial.TrialState.WAITING, params=trial.params,
      distributions=trial.distributions, user_attrs=attrs,
      intermediate_values=trial.intermediate_values))
  logging.warning('Sweep: trial %d was interrupted; its parameters run again as a new trial.',
                  trial.number)


def budget_used(trials):
  """Trials that count towards num_trials: all but interrupted ones that were retried."""
  retried = {t.user_attrs['retry_of'] for t in trials if 'retry_of' in t.user_attrs}
  return sum(1 for t in trials if t.number not in retried)


class Worker:
  """One process working on the study: asks for trials and runs them, one at a time."""

  def __init__(self, study, storage, config, sweep, metric, workdir, url, exit_on_signal):
    self.study, self.storage, self.config, self.sweep = study, storage, config, sweep
    self.metric, self.workdir, self.url = metric, workdir, url
    self.exit_on_signal = exit_on_signal
    self.ran_trials = False
    self.distributions = sweep_spec.distributions(sweep)
    self.host = socket.gethostname()

  def _fail_interrupted(self):
    """Running trials whose worker is gone: on this host a dead pid (at once), elsewhere a
    stopped heartbeat (Optuna, after GRACE_S). Each is failed and retried (`retry`)."""
    import optuna  # pylint: disable=g-import-not-at-top
    for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      if t.user_attrs.get('host') == self.host and not _alive(t.user_attrs.get('process')):
        if self.storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):  # pylint: disable=protected-access
          retry(self.study, t)
    optuna.storages.fail_stale_trials(self.study)

  def _next_trial(self):
    import optuna  # pylint: disable=g-import-not-at-top
    with sweep_storage.study_lock(self.url, self.study.study_name):
      self._fail_interrupted()
      trials = self.study.get_trials(deepcopy=False)
      waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
      if not waiting and budget_used(trials) >= int(self.study.user_attrs['num_trials']):
        return None
      trial = self.study.ask(self.distributions)
      trial.set_user_attr('host', self.host)
      trial.set_user_attr('process', _process_key(os.getpid()))
      trial.set_user_attr('workdir', str(self.workdir / 'trials' / str(trial.number)))
      return trial

  def loop(self):
    """Runs trials until the study has its num_trials. False when stopped by a signal: one
    during a trial saves it (retried on re-run); one after a trial's last evaluation lets
    it finish; no new trial starts after either."""
    with stopping.recorded_stops() as received:
      while not received() and (trial := self._next_trial()) is not None:
        self.ran_trials = True
        if not self.run_trial(trial):
          return False
      if received():
        logging.info('%s: sweep stopped between trials; re-run the same command to go on.',
                     received()[0])
        return False
    return True

  def run_trial(self, trial):
    import optuna  # pylint: disable=g-import-not-at-top
    from histojax import train  # pylint: disable=g-import-not-at-top
    number, params = trial.number, dict(trial.params)
    trial_dir = self.workdir / 'trials' / str(number)
    resumed = _take_over(trial, trial_dir)
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
      trial.report(val[key], round(epoch * PRUNER_STEPS_PER_EPOCH))
      if trial.should_prune():
        raise optuna.TrialPruned(f'{key} {val[key]:.4f} at step {step} (epoch {epoch:.2f})')

    writers.reset_cost_origin()  # each trial's report counts its own CPU and wall time
    started_cpu, started = writers.Cost().cpu_seconds(), time.time()
    state, value = optuna.trial.TrialState.FAIL, None
    try:
      with sweep_storage.Heartbeat(self.storage, trial._trial_id):  # pylint: disable=protected-access
        results = train.train_and_evaluate(config, trial_dir, 'train', on_eval=on_eval,
                                           exit_on_signal=self.exit_on_signal)
      if results is None:  # stopped by SIGTERM/SIGINT, its state saved: retried on re-run
        self._interrupted(trial)
        logging.info('Sweep stopped during trial %d; re-run the same command to go on.',
                     number)
        return False
      value = results['val'][self.metric]
      if value != value or abs(value) == float('inf'):
        trial.set_user_attr('error', f'final_val/{self.metric} is {value}')
      else:
        state = optuna.trial.TrialState.COMPLETE
    except optuna.TrialPruned as e:
      state = optuna.trial.TrialState.PRUNED
      trial.set_user_attr('pruned', str(e))
    except Exception as e:  # pylint: disable=broad-except
      trial.set_user_attr('error', f'{type(e).__name__}: {e}'[:500])
      logging.warning('Sweep trial %d failed: %s: %s', number, type(e).__name__, e,
                      exc_info=not isinstance(e, errors.UserError))
    except BaseException:  # KeyboardInterrupt outside the train loop's own handling
      self._interrupted(trial)
      raise
    trial.set_user_attr('cpu_seconds', writers.Cost().cpu_seconds() - started_cpu)
    trial.set_user_attr('wall_seconds', time.time() - started)
    if state == optuna.trial.TrialState.COMPLETE:
      self.study.tell(trial, value)
    else:
      self.study.tell(trial, state=state)
    logging.info('Sweep trial %d: %s%s', number, state.name.lower(),
                 f' final_val/{self.metric} {value:.4f}' if value is not None else '')
    return True

  def _interrupted(self, trial):
    """Failed as interrupted and retried (with its saved checkpoint, on the next run)."""
    import optuna  # pylint: disable=g-import-not-at-top
    if self.storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):  # pylint: disable=protected-access
      retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])

  def finish_if_last(self):
    """When no trial is left running or waiting: the best trial's test parts (once) and
    W/sweep.md with its figures. Returns the best trial's summary, or None."""
    import optuna  # pylint: disable=g-import-not-at-top
    with sweep_storage.study_lock(self.url, self.study.study_name):
      self._fail_interrupted()
      active = self.study.get_trials(deepcopy=False, states=(
          optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
      if active:
        logging.info('Sweep: %d trial(s) still running elsewhere; the last worker writes '
                     'sweep.md.', len(active))
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
      self.study.set_user_attr('reported_by', f'{self.host}:{path}')
    logging.info('Sweep report: %s', path)
    return best


def test_best(study, config):
  """The best trial's test parts, scored once (recorded in the study): `--mode=eval` of its
  workdir with final_test=True. A best trial run on another machine is named with the
  command to run there."""
  from histojax import train  # pylint: disable=g-import-not-at-top
  try:
    best = study.best_trial
  except ValueError:  # no complete trial
    return None
  summary = {'trial': best.number, 'value': best.value, 'params': best.params}
  done = study.user_attrs.get('best_test') or {}
  if done.get('trial') == best.number:
    return {**summary, 'test': done['results']}
  trial_dir = pathlib.Path(best.user_attrs.get('workdir', ''))
  if not (trial_dir / 'checkpoints').is_dir():
    logging.warning('Sweep: the best trial %d ran on %s in %s, not here: score its test parts '
                    'there with: python launch.py --mode=eval --workdir=%s '
                    '--config.final_test=True', best.number, best.user_attrs.get('host'),
                    trial_dir, trial_dir)
    return summary
  logging.info('Sweep: scoring the best trial %d on the test parts (read only now).',
               best.number)
  config = sweep_spec.apply(config, best.params, f'trial {best.number}')
  config.final_test = True
  results = train.train_and_evaluate(config, trial_dir, 'eval')
  tests = {part: scalars for part, scalars in results.items() if part != 'val'}
  study.set_user_attr('best_test', {'trial': best.number, 'results': tests})
  return {**summary, 'test': tests}


def _take_over(trial, trial_dir):
  """A retried trial continues the interrupted one's run when its folder is on this machine:
  the folder is renamed to this trial's. Returns the step it resumes from, or None."""
  old = trial.user_attrs.get('retry_of')
  if old is None or trial_dir.exists():
    return None
  old_dir = trial_dir.parent / str(old)
  steps = sorted(int(p.name) for p in (old_dir / 'checkpoints').glob('[0-9]*')
                 if p.name.isdigit()) if old_dir.is_dir() else []
  if not steps:
    return None
  old_dir.rename(trial_dir)
  trial.set_user_attr('resumed_from_step', steps[-1])
  return steps[-1]


def _process_key(pid):
  """'pid:start' (its start time in clock ticks since boot, Linux /proc): one process, even
  after its pid is reused."""
  try:
    stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    return f'{pid}:{stat.rsplit(")", 1)[1].split()[19]}'
  except (OSError, IndexError):
    return f'{pid}:'


def _alive(key):
  """Is the process of a _process_key still running?"""
  if not key:
    return False
  pid = int(str(key).split(':')[0])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return _process_key(pid) == key
