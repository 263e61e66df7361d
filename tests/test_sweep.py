"""Sweeps (histojax/sweep.py): a 3-trial MNIST smoke sweep end to end, a failed and a pruned
trial, kill -9 and resume, two local workers on SQLite, two workers on a real PostgreSQL,
and bad sweep files refused before any trial runs."""
import glob
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, kill_group, launch, require_data

SMOKE = ['--config=configs/mnist_cnn.py:smoke']


@pytest.fixture(autouse=True)
def _mnist():
  require_data('mnist')


def _config():
  from configs import mnist_cnn  # pylint: disable=g-import-not-at-top
  return mnist_cnn.get_config('smoke')


def _sweep_file(tmp_path, body, name='s.py'):
  path = tmp_path / name
  path.write_text('import ml_collections\n'
                  'from histojax.sweep_spec import categorical, integer, log_uniform\n'
                  'def get_sweep(arg=None):\n'
                  '  s = ml_collections.ConfigDict()\n'
                  '  s.metric = "final_val/accuracy"\n' +
                  ''.join(f'  {line}\n' for line in body.strip().splitlines()) +
                  '  return s\n')
  return path


def _run(tmp_path, sweep_path, workdir, **kwargs):
  from histojax import sweep  # pylint: disable=g-import-not-at-top
  return sweep.run(_config(), 'configs/mnist_cnn.py:smoke', str(sweep_path), workdir,
                   argv=['launch.py', *SMOKE], **kwargs)


def _study(workdir, name):
  import optuna  # pylint: disable=g-import-not-at-top
  return optuna.load_study(study_name=name, storage=f'sqlite:///{workdir}/study.db')


def _rows(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_smoke_sweep_writes_sweep_md_and_figures_and_reads_test_once(tmp_path):
  workdir = tmp_path / 'w'
  best = _run(tmp_path, ROOT / 'sweeps/lr_batch.py:smoke', workdir)
  study = _study(workdir, 'lr_batch:smoke')
  trials = study.get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE'] * 3
  assert trials[0].params == {'optimizer.lr': 1e-3, 'batch_size': 16}  # enqueue_defaults
  assert best['trial'] == study.best_trial.number
  values = {t.number: t.value for t in trials}
  assert best['value'] == max(values.values())
  for t in trials:  # ordinary runs, validation-only final reports
    final = json.loads((workdir / 'trials' / str(t.number) / 'final.json').read_text())
    if t.number != best['trial']:
      assert set(final['results']) == {'val'}
      assert 'validation only' in (workdir / 'trials' / str(t.number) / 'report.md').read_text()
    assert final['results']['val']['accuracy'] == pytest.approx(values[t.number])
    assert final['config']['final_test'] is (t.number == best['trial'])
    # Each trial's cost is its own (the trials share one process): not the sweep's so far.
    cost = [r for r in _rows(workdir / 'trials' / str(t.number) / 'metrics.jsonl')
            if 'cost/wall_seconds' in r][0]
    span = (t.datetime_complete - t.datetime_start).total_seconds()
    assert 0 < cost['cost/wall_seconds'] <= span + 1
  # The best trial's test part: read once, recorded in the study and in sweep.md.
  best_dir = workdir / 'trials' / str(best['trial'])
  test_rows = [r for r in _rows(best_dir / 'metrics.jsonl') if 'test/accuracy' in r]
  assert len(test_rows) == 1
  assert best['test']['test']['accuracy'] == pytest.approx(test_rows[0]['test/accuracy'])
  md = (workdir / 'sweep.md').read_text()
  assert f'## Best: trial {best["trial"]}' in md
  assert f'test/accuracy: {best["test"]["test"]["accuracy"]:.4f}' in md
  assert 'python launch.py --config=configs/mnist_cnn.py:smoke --config.optimizer.lr=' in md
  assert f'--config.batch_size={best["params"]["batch_size"]}' in md
  for name in ('history', 'slice', 'importance'):
    png = workdir / 'plots' / f'sweep_{name}.png'
    assert png.stat().st_size > 5000 and f'(plots/sweep_{name}.png)' in md
  assert md.count('| complete |') == 3
  # Over a finished study: no trial runs, sweep.md is rewritten, test is not read again.
  (workdir / 'sweep.md').unlink()
  again = _run(tmp_path, ROOT / 'sweeps/lr_batch.py:smoke', workdir)
  assert again['trial'] == best['trial'] and again['test'] == best['test']
  assert len(_study(workdir, 'lr_batch:smoke').get_trials()) == 3
  assert (workdir / 'sweep.md').exists()
  assert len([r for r in _rows(best_dir / 'metrics.jsonl') if 'test/accuracy' in r]) == 1


def test_a_failed_trial_is_recorded_and_a_bad_trial_is_pruned(tmp_path):
  path = _sweep_file(tmp_path, '''
s.space = (log_uniform('optimizer.lr', 1e-10, 1e9),)
s.num_trials = 3
s.pruner = dict(name='median', startup_trials=1)
s.enqueue = ({'optimizer.lr': 3e-3}, {'optimizer.lr': 1e8}, {'optimizer.lr': 1e-9})''')
  workdir = tmp_path / 'w'
  best = _run(tmp_path, path, workdir)
  trials = _study(workdir, 's').get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE', 'FAIL', 'PRUNED']
  assert 'TrainingDiverged: Non-finite training loss' in trials[1].user_attrs['error']
  # Pruned at its first evaluation (step 10 of 32 per epoch: pruner step 31), below trial 0.
  assert list(trials[2].intermediate_values) == [31]
  assert trials[2].intermediate_values[31] < trials[0].intermediate_values[31]
  assert 'at step 10' in trials[2].user_attrs['pruned']
  assert best['trial'] == 0
  md = (workdir / 'sweep.md').read_text()
  assert '| 1 | fail |' in md and 'error: TrainingDiverged' in md
  assert '| 2 | pruned |' in md and 'pruned: val/accuracy' in md


@pytest.mark.parametrize('body, message', [
    ("s.space = (log_uniform('optimizer.lrate', 1e-4, 1e-2),)",
     "space[0] ('optimizer.lrate'): unknown config field 'optimizer.lrate'; did you mean"),
    ("s.space = (log_uniform('optimizer.lr', 1e-2, 1e-4),)",
     "space[0] ('optimizer.lr'): empty range [0.01, 0.0001]"),
    ("s.space = (categorical('batch_size', ()),)", "space[0] ('batch_size'): no choices"),
    ("s.space = (categorical('batch_size', (16, 'big')),)",
     "config field 'batch_size' cannot take 'big'"),
    ("s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),)\ns.metric = 'final_val/dice'",
     "metric 'final_val/dice' is not a validation metric of this task"),
    ("s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),)\ns.metric = 'test/accuracy'",
     "metric 'test/accuracy' must be final_val/<m>"),
    ("s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),)\ns.sampler = 'grid'",
     "sampler grid needs categorical or (linear) integer parameters; 'optimizer.lr'"),
    ("s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),)\ns.trials = 3",
     "unknown sweep key(s) ['trials']"),
    ("s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),)\n"
     "s.enqueue = ({'optimizer.lr': 1.0},)",
     "enqueue point {'optimizer.lr': 1.0}: optimizer.lr=1.0 lies outside the space"),
    ("s.space = (categorical('batch_size', (32, 64)),)\ns.enqueue_defaults = True",
     "enqueue_defaults (the config's own values): batch_size=16 lies outside the space"),
    ("s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),)\n"
     "s.pruner = dict(name='median', n_startup_trials=2)",
     "unknown pruner key(s) ['n_startup_trials']"),
])
def test_bad_sweep_files_fail_before_any_trial_naming_file_and_key(tmp_path, body, message):
  from histojax import sweep_spec  # pylint: disable=g-import-not-at-top
  path = _sweep_file(tmp_path, body)
  with pytest.raises(sweep_spec.SweepError) as e:
    _run(tmp_path, path, tmp_path / 'w')
  assert str(path) in str(e.value) and message in str(e.value)
  assert not (tmp_path / 'w' / 'study.db').exists() and not (tmp_path / 'w' / 'trials').exists()


def test_a_sweep_file_without_get_sweep_is_refused_by_launch(tmp_path):
  path = tmp_path / 'nothing.py'
  path.write_text('SPACE = {}\n')
  proc = launch([*SMOKE, '--mode=sweep', f'--sweep={path}', f'--workdir={tmp_path / "w"}'],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 1, out
  assert f'histojax: error: {path} has no get_sweep(arg=None) function' in out
  assert not (tmp_path / 'w' / 'trials').exists()


def _sweep_args(workdir, *extra):
  return [*SMOKE, '--mode=sweep', '--sweep=sweeps/lr_batch.py:smoke', f'--workdir={workdir}',
          *extra]


def test_kill_9_during_a_trial_and_the_rerun_completes_without_redoing_trials(tmp_path):
  workdir = tmp_path / 'w'
  args = _sweep_args(workdir, '--config.total_steps=60')  # a window of 5 evals to kill in
  proc = launch(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (workdir / 'trials/1/checkpoints/10').is_dir():  # trial 1 under way
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.1)
  kill_group(proc)
  proc.wait()
  saved = max(int(p.name) for p in (workdir / 'trials/1/checkpoints').iterdir()
              if p.name.isdigit())
  assert saved < 60
  first = (workdir / 'trials/0/metrics.jsonl').read_text()
  proc = launch(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out
  trials = _study(workdir, 'lr_batch:smoke').get_trials()
  states = {t.number: t.state.name for t in trials}
  assert states == {0: 'COMPLETE', 1: 'FAIL', 2: 'COMPLETE', 3: 'COMPLETE'}
  retry = trials[2]
  assert retry.user_attrs['retry_of'] == 1 and retry.params == trials[1].params
  assert retry.user_attrs['resumed_from_step'] == saved
  assert f'trial 2 (retry of 1, resumed at step {saved})' in out and 'Resumed from' in out
  now = (workdir / 'trials/0/metrics.jsonl').read_text()
  assert now.startswith(first)  # not redone: at most the best trial's test report appended
  added = [json.loads(line) for line in now[len(first):].splitlines()]
  assert not any('train/loss' in r or 'val/accuracy' in r for r in added)
  assert not (workdir / 'trials/1').exists()  # its run went on as trial 2
  steps = [r['step'] for r in _rows(workdir / 'trials/2/metrics.jsonl') if 'train/loss' in r]
  assert set(steps) == set(range(5, 61, 5)) and steps[-1] == 60
  # Steps up to the saved checkpoint were trained once; later ones logged before the kill
  # repeat (metrics.jsonl readers take the last row per step).
  assert all(steps.count(k) == 1 for k in range(5, saved + 1, 5))
  md = (workdir / 'sweep.md').read_text()
  assert 'interrupted; retried as 2' in md and f'retry of 1; resumed at step {saved}' in md


def test_grid_sampler_runs_every_point_once(tmp_path):
  path = _sweep_file(tmp_path, """
s.space = (categorical('batch_size', (8, 16)),)
s.sampler = 'grid'
s.num_trials = 2
s.pruner = dict(name='none')""")
  workdir = tmp_path / 'w'
  best = _run(tmp_path, path, workdir)
  trials = _study(workdir, 's').get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE'] * 2
  assert sorted(t.params['batch_size'] for t in trials) == [8, 16]
  assert best['test'] and (workdir / 'sweep.md').exists()


def _trial_runs(workdirs):
  """{trial number: [workdir]} of every trial folder with a training start."""
  runs = {}
  for w in workdirs:
    for d in sorted((w / 'trials').iterdir()):
      if (d / 'metrics.jsonl').exists():
        runs.setdefault(int(d.name), []).append(w)
  return runs


def test_two_local_workers_share_one_sqlite_study(tmp_path):
  workdir = tmp_path / 'w'
  proc = launch(_sweep_args(workdir, '--sweep_workers=2'), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out
  trials = _study(workdir, 'lr_batch:smoke').get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE'] * 3
  assert len({t.user_attrs['process'] for t in trials}) == 2  # both workers ran trials
  assert {n: len(w) for n, w in _trial_runs([workdir]).items()} == {0: 1, 1: 1, 2: 1}
  assert (workdir / 'sweep.md').exists() and out.count('Sweep report:') == 1


# ------------------------------------------------------------------- a real PostgreSQL
def _postgres_bin():
  found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'))
  return pathlib.Path(found[-1]).parent if found else None


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture
def postgres():
  """A PostgreSQL server from the distribution's packages on 127.0.0.1, a free port and a
  temporary data directory, run as the `postgres` user when we are root (initdb refuses
  root). Yields its URL."""
  bindir = _postgres_bin()
  if bindir is None:
    message = ('PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin); install the '
               'postgresql package (.ci/run does)')
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(message)
    pytest.skip(message)
  root = pathlib.Path(tempfile.mkdtemp(prefix='histojax_pg_'))
  as_user = []
  if os.geteuid() == 0:
    import pwd  # pylint: disable=g-import-not-at-top
    user = pwd.getpwnam('postgres')
    os.chown(root, user.pw_uid, user.pw_gid)
    as_user = ['runuser', '-u', 'postgres', '--']
  port, data = _free_port(), root / 'data'
  subprocess.run([*as_user, bindir / 'initdb', '-D', data, '-A', 'trust', '-U', 'postgres',
                  '--no-sync'], check=True, capture_output=True)
  subprocess.run([*as_user, bindir / 'pg_ctl', '-D', data, '-l', root / 'server.log', '-w',
                  '-o', f'-p {port} -k {root} -c listen_addresses=127.0.0.1', 'start'],
                 check=True, capture_output=True)
  try:
    yield f'postgresql://postgres@127.0.0.1:{port}/postgres'
  finally:
    subprocess.run([*as_user, bindir / 'pg_ctl', '-D', data, '-m', 'immediate', 'stop'],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_complete_the_trials_without_doing_one_twice(tmp_path,
                                                                               postgres):
  # Two "machines": each its own workdir, one study in the database.
  workdirs = [tmp_path / 'machine_a', tmp_path / 'machine_b']
  procs = [launch(_sweep_args(w, f'--storage={postgres}', '--study_name=pg_test'),
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for w in workdirs]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  import optuna  # pylint: disable=g-import-not-at-top
  trials = optuna.load_study(study_name='pg_test', storage=postgres).get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE'] * 3
  runs = _trial_runs(workdirs)
  assert sorted(runs) == [0, 1, 2] and all(len(w) == 1 for w in runs.values())
  assert len({t.user_attrs['process'] for t in trials}) == 2
  # The last worker to finish wrote sweep.md (and scored the best trial's test once).
  written = [w for w in workdirs if (w / 'sweep.md').exists()]
  assert len(written) == 1
  assert 'postgresql://postgres@127.0.0.1' in (written[0] / 'sweep.md').read_text()


def test_sigterm_during_a_trial_saves_it_and_stops_the_sweep(tmp_path):
  workdir = tmp_path / 'w'
  proc = launch(_sweep_args(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
  deadline = time.time() + 300
  while not (workdir / 'trials/0/checkpoints/10').is_dir():
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  trials = _study(workdir, 'lr_batch:smoke').get_trials()
  assert 'Sweep trial 1' not in out  # no new trial after the stop
  # Trial 0 either finished before the signal was seen or was saved and is queued again.
  if trials[0].state.name == 'FAIL':
    assert 'Sweep stopped during trial 0' in out
    assert [t.state.name for t in trials] == ['FAIL', 'WAITING']
    assert trials[1].user_attrs['retry_of'] == 0
  else:
    assert 'sweep stopped between trials' in out


# ------------------------------------------------------------------------ no training
@pytest.mark.parametrize('config_spec, sweep_spec', [
    ('configs/mnist_cnn.py:cpu', 'sweeps/lr_batch.py'),
    ('configs/mnist_cnn.py:smoke', 'sweeps/lr_batch.py:smoke'),
    ('configs/nuclei_resnet18.py:cpu', 'sweeps/lr_batch.py'),
    ('configs/warwick_unet.py:cpu', 'sweeps/glas_unet.py'),
    ('configs/warwick_unet.py:smoke', 'sweeps/glas_unet.py:smoke'),
])
def test_shipped_sweeps_fit_their_configs(config_spec, sweep_spec):
  import importlib  # pylint: disable=g-import-not-at-top
  from histojax import sweep_spec as spec_lib  # pylint: disable=g-import-not-at-top
  from histojax.tasks import classification, segmentation  # pylint: disable=g-import-not-at-top
  path, _, arg = config_spec.partition(':')
  config = importlib.import_module(path[:-3].replace('/', '.')).get_config(arg)
  sweep, file = spec_lib.load(ROOT / sweep_spec)
  info = {'num_classes': 2, 'instance_masks': True} if config.task == 'segmentation' else {
      'num_classes': 10 if config.dataset == 'mnist' else 4}
  task = (segmentation.SegmentationTask if config.task == 'segmentation' else
          classification.ClassificationTask)(config, info)
  spec_lib.check(sweep, file, config)  # enqueued points (the config's own values) included
  metric, direction = spec_lib.check_metric(sweep, file, config, task.metric_names())
  assert direction == 'maximize' and f'val/{metric}' == config.best_metric


def test_budget_counts_a_retried_trial_once():
  import optuna  # pylint: disable=g-import-not-at-top
  from histojax import sweep_worker  # pylint: disable=g-import-not-at-top
  study = optuna.create_study()
  dist = {'x': optuna.distributions.FloatDistribution(0, 1)}
  for number, (state, attrs) in enumerate([('COMPLETE', {}), ('FAIL', {}),
                                           ('WAITING', {'retry_of': 1}), ('PRUNED', {})]):
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState[state], params={'x': 0.5}, distributions=dist,
        value=0.1 if state == 'COMPLETE' else None, user_attrs=attrs,
        intermediate_values={100: 0.1} if state == 'PRUNED' else None))
    del number
  assert sweep_worker.budget_used(study.get_trials()) == 3


def test_process_keys_tell_a_reused_pid_from_the_process():
  from histojax.sweep_worker import alive, process_key  # pylint: disable=g-import-not-at-top
  me = process_key(os.getpid())
  assert alive(me)
  pid, start = me.split(':')
  assert not alive(f'{pid}:{int(start) + 1}')
  child = subprocess.Popen(['true'])
  key = process_key(child.pid)
  child.wait()
  assert not alive(key)


def test_a_config_whose_best_metric_the_task_lacks_fails_before_training(tmp_path):
  from histojax import errors, train  # pylint: disable=g-import-not-at-top
  config = _config()
  config.best_metric = 'val/dice'
  with pytest.raises(errors.ConfigError, match="best_metric='val/dice' is not a validation"):
    train.train_and_evaluate(config, tmp_path / 'w')
  assert not list((tmp_path / 'w').glob('checkpoints/*'))
