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
the interrupted trial's newest checkpoint when that is on this machine (sweep_worker.py). A
trial that raises (a bad value, a diverged loss) is recorded failed with its error and the
sweep goes on.
"""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import warnings

from histojax import errors, sweep_spec, sweep_storage, sweep_worker, writers
from histojax import workdir as workdir_lib

# Paths may differ between the machines of one study; every other shaping value must not.
MACHINE_LOCAL = ('data.root', 'data.csv', 'data.images', 'data.tfds_data_dir', 'init_from')


class StudyMismatch(errors.UserError):
  """The study in the storage was made by another sweep or config."""


def run(config, config_spec, sweep_path_arg, workdir, storage_url=None, workers=1,
        study_name=None, argv=None, exit_on_signal=False):
  """The `--mode=sweep` entry point. Returns the study's best {'trial', 'value', 'params',
  'test'} or None. `argv` is the command line (for the workers --sweep_workers starts, and
  the best trial's command in sweep.md); exit_on_signal as in train.train_and_evaluate."""
  workdir = pathlib.Path(workdir).resolve()
  argv = list(argv if argv is not None else sys.argv)
  sweep, path = sweep_spec.load(sweep_path_arg)
  sweep_spec.check(sweep, path, config)  # before the data: a typo fails at once
  metric, direction = sweep_spec.check_metric(sweep, path, config, _metric_names(config, path))
  workdir.mkdir(parents=True, exist_ok=True)
  url = storage_url or sweep_storage.default_url(workdir)
  name = study_name or path.stem + (f':{sweep_path_arg.partition(":")[2]}'
                                    if ':' in str(sweep_path_arg) else '')
  if workers > 1:
    return _start_workers(argv, workers)
  study, storage = _open_study(config, config_spec, sweep, metric, direction, url, name, argv)
  worker = sweep_worker.Worker(study, storage, config, sweep, metric, workdir, url,
                               exit_on_signal)
  while True:
    if not worker.loop():
      return None
    best = worker.finish_if_last(test_best)
    if best != 'again':  # 'again': retries of interrupted trials wait to be run
      return best


def _metric_names(config, path):
  from histojax import tasks  # pylint: disable=g-import-not-at-top
  from histojax.data import datasets  # pylint: disable=g-import-not-at-top
  splits = datasets.get_splits(config)
  if not len(splits.val):
    raise sweep_spec.SweepError(f'{path}: a sweep selects on validation data, and this config '
                                'has none (config keys data.val_fraction / data.val_size).')
  return tasks.get_task(config, splits.info).metric_names()


def _start_workers(argv, n):
  """`--sweep_workers=N`: N worker processes of this very command on one study. SIGTERM is
  passed on to them (a terminal's Ctrl-C reaches the whole process group by itself)."""
  args, skip = [], False
  for a in argv[1:]:  # drop --sweep_workers=N and --sweep_workers N
    if skip or a.startswith('--sweep_workers'):
      skip = a == '--sweep_workers'
      continue
    args.append(a)
  args.append('--sweep_workers=1')
  script = pathlib.Path(argv[0]).resolve()
  logging.info('Starting %d sweep workers: %s %s', n, script.name, ' '.join(args))
  procs = [subprocess.Popen([sys.executable, str(script), *args]) for _ in range(n)]

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  old = {sig: signal.signal(sig, handler) for sig, handler in
         ((signal.SIGTERM, forward), (signal.SIGINT, lambda *_: None))}
  try:
    codes = [p.wait() for p in procs]
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
  if any(codes):
    raise errors.UserError(f'Sweep workers exited with status {codes}; re-run the same '
                           'command to go on.')
  return None


def _open_study(config, config_spec, sweep, metric, direction, url, name, argv):
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  # Heartbeats and the figures are "experimental" in Optuna: said once per call otherwise.
  warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
  # Optuna expects heartbeats from Study.optimize; the worker records them itself.
  warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used')
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
            'space': [dict(x) for x in sweep.space], 'config_values': _comparable(config),
            'command': _command(argv)}
  with sweep_storage.study_lock(url, name):
    # Under the lock: the first worker creates the tables, which two at once cannot.
    storage = sweep_storage.open_storage(url, failed_trial_callback=sweep_worker.retry)
    exists = name in optuna.study.get_all_study_names(storage)
    study = optuna.create_study(study_name=name, storage=storage,
                                sampler=_sampler(sweep, exists, name, storage),
                                pruner=pruner, direction=direction, load_if_exists=True)
    saved = study.user_attrs
    compared = [k for k in ('metric', 'direction', 'space', 'config_values') if k in saved]
    differ = sorted(workdir_lib.changes({k: saved[k] for k in compared},
                                        {k: record[k] for k in compared}))
    if differ:
      raise StudyMismatch(
          f'Study {name!r} in {sweep_storage.redact(url)} was made by another sweep or config '
          f'({", ".join(differ[:6])} differ). Start its own command again, or use another '
          '--workdir (SQLite) or --study_name (PostgreSQL).')
    if 'command' not in saved:  # a new study: its queued points first
      for point in sweep_spec.points(sweep, config):
        study.enqueue_trial(point, user_attrs={'enqueued': True})
    for k, v in record.items():  # each key written once; a crash half-way fills the rest
      if k not in saved:
        study.set_user_attr(k, v)
    study.set_user_attr('num_trials', int(sweep.num_trials))  # a re-run may extend the study
  return study, storage


def _sampler(sweep, exists, name, storage):
  """The worker that creates the study samples from sweep.seed (a one-worker sweep is
  reproducible); any other worker or re-run mixes in its process and the trials so far, so
  that it does not draw the same points again. The grid's order is the same everywhere (its
  points are numbered by it)."""
  import optuna  # pylint: disable=g-import-not-at-top
  seed = sweep.seed
  if exists and sweep.sampler != 'grid':
    done = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    seed = hash((sweep.seed, os.getpid(), done)) % 2**31
  if sweep.sampler == 'grid':
    return optuna.samplers.GridSampler(sweep_spec.grid(sweep, 'sweep'), seed=seed)
  if sweep.sampler == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _comparable(config):
  """The values that shape a trial (run-time keys and paths may differ between machines)."""
  flat = workdir_lib.flatten(json.loads(config.to_json()))
  return {k: v for k, v in sorted(flat.items())
          if workdir_lib.kind(k) != 'runtime' and k not in MACHINE_LOCAL}


def _command(argv):
  """The sweep's command without the sweep flags: the start of the best trial's command."""
  drop = ('--mode', '--sweep', '--sweep_workers', '--storage', '--study_name', '--workdir')
  kept, skip = [], False
  for a in argv[1:]:
    if skip or a.startswith(drop):
      skip = a in drop  # the `--flag value` form: its value follows
      continue
    kept.append(a)
  return ' '.join(['python launch.py', *kept])


def test_best(study, config):
  """The best trial's test parts, scored once (recorded in the study): `--mode=eval` of its
  workdir with final_test=True. A best trial run on another machine is scored when this
  sweep's command is run again there."""
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
  if (best.user_attrs.get('machine') != sweep_worker.machine()
      or not (trial_dir / 'checkpoints').is_dir()):
    logging.warning('Sweep: the best trial %d ran on %s in %s: run this sweep command again '
                    'there to score its test parts.', best.number, best.user_attrs.get('host'),
                    trial_dir)
    return summary
  logging.info('Sweep: scoring the best trial %d on the test parts (read only now).',
               best.number)
  config = sweep_spec.apply(config, best.params, f'trial {best.number}')
  config.final_test = True
  with writers.cost_from_now():
    results = train.train_and_evaluate(config, trial_dir, 'eval')
  tests = {part: scalars for part, scalars in results.items() if part != 'val'}
  # A later, larger sweep may find a new best: each trial whose test was read is listed.
  study.set_user_attr('tested', [*study.user_attrs.get('tested', []), best.number])
  study.set_user_attr('best_test', {'trial': best.number, 'results': tests})
  return {**summary, 'test': tests}
