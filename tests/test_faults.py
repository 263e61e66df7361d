"""Fault injection on the train loop: restarts, damaged checkpoints, changed configs, torn
files, full or unwritable disks, locks. Each test asserts the outcome: the parameters of an
uninterrupted run (bitwise), a message naming the file or key, and nothing already saved lost.
In-process where no kill is needed; one shared reference run per configuration."""
import json
import logging
import os
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import pytest

from conftest import ROOT, launch, require_data

from histojax import checkpoint, errors, train, workdir as workdir_lib, writers


@pytest.fixture(autouse=True)
def _mnist():
  require_data('mnist')


def smoke_config(**overrides):
  from configs import mnist_cnn  # pylint: disable=g-import-not-at-top
  config = mnist_cnn.get_config('smoke')
  config.total_steps, config.eval_every_steps, config.ckpt_every_steps = 20, 5, 5
  config.schedule.name = 'constant'  # so a shorter run is a prefix of a longer one
  for key, value in overrides.items():
    parent = config
    *head, last = key.split('.')
    for h in head:
      parent = parent[h]
    parent[last] = value
  return config


def params_of(workdir, step=None):
  directory = pathlib.Path(workdir) / 'checkpoints'
  path = directory / str(step) if step else directory
  return checkpoint.load_variables(path)['params']


def steps_on_disk(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted 20-step run (checkpoints every 5, the newest 2 kept)."""
  workdir = tmp_path_factory.mktemp('reference')
  results = train.train_and_evaluate(smoke_config(), workdir)
  return workdir, params_of(workdir, 20), results


# ------------------------------------------------------------------ retention across restarts


def test_best_checkpoint_survives_a_resume_without_improvement(tmp_path):
  """The reported bug: val does not improve after the checkpoint a run restarts from, and the
  next save deleted the best checkpoint (the run then died at its final report)."""
  frozen = {'optimizer.lr': 0.0, 'model.batch_norm': False, 'ckpt_keep': 1,
            'early_stopping_patience': 0}
  train.train_and_evaluate(smoke_config(**frozen), tmp_path)
  assert steps_on_disk(tmp_path) == [5, 20]  # best (first eval: later ones only tie) + latest
  results = train.train_and_evaluate(smoke_config(**frozen, total_steps=40), tmp_path)
  assert steps_on_disk(tmp_path) == [5, 40]
  rows = writers.read_jsonl(tmp_path / 'metrics.jsonl')
  assert writers.latest(rows, 'test/')['test/count'] == 200
  assert [r['step'] for r in rows if 'test/accuracy' in r] == [5, 5]  # the best, both times
  again = train.train_and_evaluate(smoke_config(**frozen, total_steps=40), tmp_path, 'eval')
  assert again['test'] == results['test']


# ---------------------------------------------------------------------- damaged checkpoints


def _truncate_largest_file(step_dir):
  files = sorted((p for p in (step_dir / 'state').rglob('*') if p.is_file()),
                 key=lambda p: p.stat().st_size)
  with open(files[-1], 'r+b') as f:
    f.truncate(files[-1].stat().st_size // 2)


def _remove_metadata(step_dir):
  for p in (step_dir / 'state').glob('*METADATA*'):
    p.unlink()
  (step_dir / 'state' / 'manifest.ocdbt').unlink(missing_ok=True)


def _empty_directory(step_dir):
  for p in step_dir.iterdir():
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def _garbage_loop_json(step_dir):
  (step_dir / 'loop' / 'metadata').write_text('{"data_iterator": {"next_ind')


@pytest.fixture(scope='module')
def fifteen_steps(tmp_path_factory):
  """The reference run stopped at step 15 (checkpoints 10 and 15), shared by the cases."""
  workdir = tmp_path_factory.mktemp('fifteen')
  train.train_and_evaluate(smoke_config(total_steps=15), workdir)
  (workdir / '.lock').unlink(missing_ok=True)
  return workdir


@pytest.mark.parametrize('damage', [_truncate_largest_file, _remove_metadata, _empty_directory,
                                    _garbage_loop_json],
                         ids=['truncated', 'no-metadata', 'emptied', 'garbage-loop-json'])
def test_damaged_newest_checkpoint_falls_back_and_ends_exact(tmp_path, reference, damage,
                                                             fifteen_steps, caplog):
  """Steps 10 and 15 on disk; 15 is damaged: the run warns naming it, moves it aside (kept),
  resumes from 10 and ends bit-identical to the uninterrupted run."""
  _, expected, _ = reference
  shutil.copytree(fifteen_steps, tmp_path, dirs_exist_ok=True)
  assert steps_on_disk(tmp_path)[-2:] == [10, 15]
  damage(tmp_path / 'checkpoints' / '15')
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(smoke_config(), tmp_path)
  assert f'{tmp_path / "checkpoints" / "15"} cannot be restored' in caplog.text
  moved = list((tmp_path / 'checkpoints_corrupt').iterdir())
  assert [p.name.split('-')[0] for p in moved] == ['15']  # kept, not deleted
  assert_same(params_of(tmp_path, 20), expected)


def test_no_restorable_checkpoint_is_an_error_that_keeps_them(tmp_path):
  train.train_and_evaluate(smoke_config(total_steps=5, ckpt_keep=1), tmp_path)
  _empty_directory(tmp_path / 'checkpoints' / '5')
  with pytest.raises(errors.CheckpointError, match='can be restored'):
    train.train_and_evaluate(smoke_config(), tmp_path)
  assert (tmp_path / 'checkpoints' / '5').is_dir()


# --------------------------------------------------------------------------- config changes


def test_config_kinds():
  kinds = {k: workdir_lib.kind(k) for k in (
      'model.features', 'dataset', 'seed', 'batch_size', 'data.crop_size', 'best_metric',
      'init_from', 'freeze.steps',
      'data.augment.crop_size', 'data.fractions.val', 'total_steps', 'optimizer.lr',
      'schedule.name', 'data.augment.hue', 'data.workers', 'inference.tta', 'eval_batch_size')}
  assert kinds == {
      'model.features': 'shaping', 'dataset': 'shaping', 'seed': 'shaping',
      'best_metric': 'shaping', 'init_from': 'shaping', 'freeze.steps': 'shaping',
      'batch_size': 'shaping', 'data.crop_size': 'shaping', 'data.augment.crop_size': 'shaping',
      'data.fractions.val': 'shaping', 'total_steps': 'resumable',
      'optimizer.lr': 'resumable', 'schedule.name': 'resumable',
      'data.augment.hue': 'resumable', 'data.workers': 'runtime', 'inference.tta': 'runtime',
      'eval_batch_size': 'runtime'}


def test_changes_see_groups_replacing_values_and_keys_new_since_the_saved_file():
  from configs import common, crchisto_types_unet, mnist_cnn
  plain, aug = mnist_cnn.get_config('smoke'), mnist_cnn.get_config('smoke,aug')
  diff = workdir_lib.changes(plain.to_dict(), aug.to_dict())
  assert list(diff) == ['data.device_augment']  # None -> a group: one change, named
  types, merged = (crchisto_types_unet.get_config(a) for a in ('smoke', 'smoke,merge'))
  assert 'data.merge' in workdir_lib.changes(types.to_dict(), merged.to_dict())
  old = plain.to_dict()
  del old['data']['folds'], old['data']['fold'], old['ckpt_keep']  # a file from before them
  new = mnist_cnn.get_config('smoke')
  defaults = common.base_config().to_dict()
  assert workdir_lib.changes(old, new.to_dict(), defaults) == {}  # defaults: no change
  new.data.folds, new.data.fold = 4, 1
  assert workdir_lib.changes(old, new.to_dict(), defaults) == {
      'data.fold': (0, 1), 'data.folds': (0, 4)}


def test_any_change_is_accepted_before_the_first_checkpoint(tmp_path):
  """A start that failed before saving (out of memory at batch 32) may be retried with
  another batch size in the same workdir."""
  workdir_lib.write_json_atomic(tmp_path / 'config.json',
                                json.loads(smoke_config(batch_size=32).to_json()))
  with pytest.raises(errors.WorkdirError, match='batch_size'):
    workdir_lib.accept_config(tmp_path, smoke_config(), 'train', has_checkpoint=True)
  assert workdir_lib.accept_config(tmp_path, smoke_config(), 'train',
                                   has_checkpoint=False).batch_size == 16


def test_data_mpp_is_settable_while_unknown_and_fixed_once_set(tmp_path):
  """A run trained before data.mpp existed (0: unknown) predicts slides with it set; a run
  whose slides were cut at a pixel size keeps it."""
  workdir_lib.write_json_atomic(tmp_path / 'config.json', json.loads(smoke_config().to_json()))
  assert workdir_lib.accept_config(tmp_path, smoke_config(**{'data.mpp': 0.5}), 'predict'
                                   ).data.mpp == 0.5
  workdir_lib.write_json_atomic(tmp_path / 'config.json',
                                json.loads(smoke_config(**{'data.mpp': 0.5}).to_json()))
  with pytest.raises(errors.WorkdirError, match=r'data.mpp: 0.5 -> 0.25'):
    workdir_lib.accept_config(tmp_path, smoke_config(**{'data.mpp': 0.25}), 'train')


def test_a_checkpoint_that_does_not_fit_is_refused_not_treated_as_damage(tmp_path,
                                                                         reference):
  """config.json agrees with the new config but the checkpoints hold Adam's state: the
  restart is refused naming opt_state; config.json and the checkpoints stay as they were."""
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  sgd = smoke_config(**{'optimizer.name': 'sgd'})
  workdir_lib.write_json_atomic(workdir / 'config.json', json.loads(sgd.to_json()))
  before = (workdir / 'config.json').read_bytes(), steps_on_disk(workdir)
  with pytest.raises(errors.WorkdirError, match='opt_state'):
    train.train_and_evaluate(sgd, workdir)
  assert ((workdir / 'config.json').read_bytes(), steps_on_disk(workdir)) == before
  assert not (workdir / 'checkpoints_corrupt').exists()


def test_shaping_change_is_refused_before_anything_is_written(tmp_path, reference):
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  changed = smoke_config(seed=1)
  changed.model.features = (8, 16)
  with pytest.raises(errors.WorkdirError) as e:
    train.train_and_evaluate(changed, workdir)
  assert 'model.features' in str(e.value) and 'seed' in str(e.value)
  assert 'new --workdir' in str(e.value)
  after = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file() and p.name != '.lock'}
  assert after == {p: b for p, b in before.items() if p.name != '.lock'}
  # The run is intact: eval from its own config.json gives the same test numbers.
  results = train.train_and_evaluate(workdir_lib.saved_config(workdir), workdir, 'eval')
  assert results['test'] == reference[2]['test']


def test_resumable_change_is_logged_and_runtime_change_is_free_in_eval(tmp_path, reference,
                                                                       caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(smoke_config(total_steps=25, **{'optimizer.lr': 5e-4}), workdir)
  assert 'Config change on restart: total_steps 20 -> 25' in caplog.text
  assert 'optimizer.lr 0.001 -> 0.0005' in caplog.text
  assert json.loads((workdir / 'config.json').read_text())['total_steps'] == 25
  # Compute is summed over starts: the first run's, carried in its checkpoint, plus this one.
  first = writers.latest(writers.read_jsonl(reference[0] / 'metrics.jsonl'), 'cost/')
  total = writers.latest(writers.read_jsonl(workdir / 'metrics.jsonl'), 'cost/')
  assert total['cost/cpu_seconds'] > first['cost/cpu_seconds'] > 0
  assert total['cost/wall_seconds'] > first['cost/wall_seconds'] > 0
  assert 'over 2 start(s)' in (workdir / 'report.md').read_text()
  # eval: run-time keys from --config apply; a resumable key keeps the run's own value.
  config = smoke_config(total_steps=99, eval_batch_size=32)
  accepted = workdir_lib.accept_config(workdir, config, 'eval')
  assert (accepted.total_steps, accepted.eval_batch_size) == (25, 32)


def test_config_json_written_before_a_key_existed_still_loads(tmp_path, reference):
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  old = json.loads((workdir / 'config.json').read_text())
  for key in ('ckpt_keep', 'l2_kernel', 'l2_bias', 'freeze'):
    del old[key]
  del old['data']['skip_bad'], old['data']['folds']
  (workdir / 'config.json').write_text(json.dumps(old))
  config = workdir_lib.saved_config(workdir)
  assert config.ckpt_keep == 2 and config.data.folds == 0  # today's defaults
  results = train.train_and_evaluate(config, workdir, 'eval')
  assert results['test'] == reference[2]['test']
  train.train_and_evaluate(smoke_config(total_steps=25), workdir)  # resume: accepted
  assert steps_on_disk(workdir)[-1] == 25


# ------------------------------------------------------------------------- files and disks


def test_torn_metrics_line_is_dropped_with_a_warning(tmp_path, reference, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 20, "test/accur')  # power loss mid-write
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(workdir_lib.saved_config(workdir), workdir, 'eval')
  assert 'torn line' in caplog.text
  assert results['test'] == reference[2]['test']
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert all(json.loads(line) for line in lines)  # repaired: every line parses


def test_checkpoints_path_is_a_file_fails_at_once(tmp_path):
  (tmp_path / 'checkpoints').write_text('not a folder')
  with pytest.raises(errors.CheckpointError, match=str(tmp_path / 'checkpoints')):
    train.train_and_evaluate(smoke_config(), tmp_path)
  assert not (tmp_path / 'metrics.jsonl').exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (root can mount one here), else None."""
  mount = tmp_path / 'small'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mount)],
                    capture_output=True).returncode != 0:
    yield None
    return
  try:
    yield mount
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


def test_full_disk_stops_at_the_failed_save_naming_the_cause(tmp_path, small_disk,
                                                             monkeypatch):
  """Checkpoints on a full file system: the first save fails, the run stops at once with the
  cause (not training on past it), and what was saved before stays."""
  if small_disk is None:  # no mount here: simulate ENOSPC in orbax's write
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    def no_space(*args, **kwargs):
      raise OSError(28, 'No space left on device')
    monkeypatch.setattr(ocp.CheckpointManager, 'save', no_space)
    (tmp_path / 'w').mkdir()
    workdir = tmp_path / 'w'
  else:
    workdir = tmp_path / 'w'
    workdir.mkdir()
    (workdir / 'checkpoints').symlink_to(small_disk)
  with pytest.raises(errors.CheckpointError) as e:
    train.train_and_evaluate(smoke_config(), workdir)
  message = str(e.value)
  assert 'No space left on device (errno 28)' in message and str(workdir) in message
  failed = int(message.split('checkpoint step ')[1].split()[0])
  rows = writers.read_jsonl(workdir / 'metrics.jsonl')
  assert max(r['step'] for r in rows) == failed  # stopped at the failed save, not later
  assert steps_on_disk(workdir) == list(range(5, failed, 5))[-2:]  # earlier saves kept


def test_second_run_on_a_workdir_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
  with workdir_lib.Lock(tmp_path):
    proc = launch([f'--config={ROOT}/configs/mnist_cnn.py:smoke', f'--workdir={tmp_path}'],
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 1
  assert f'is in use by pid {os.getpid()}' in out and 'Traceback' not in out
  assert not (tmp_path / 'config.json').exists()
  # A lock file left by a dead process holds no flock: the next run takes it over.
  (tmp_path / '.lock').write_text('pid 999999 on host gone (since 2026-01-01 00:00:00)\n')
  with workdir_lib.Lock(tmp_path):
    assert f'pid {os.getpid()}' in (tmp_path / '.lock').read_text()


def test_read_only_workdir_and_unwritable_cache_are_named(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('a file where a folder should be')
  with pytest.raises(errors.WorkdirError, match=str(blocker)):
    train.train_and_evaluate(smoke_config(), blocker / 'w')
  readonly = tmp_path / 'ro'
  readonly.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(readonly)],
                    capture_output=True).returncode == 0:
    try:
      with pytest.raises(errors.WorkdirError, match='Read-only file system'):
        train.train_and_evaluate(smoke_config(), readonly)
    finally:
      subprocess.run(['umount', '-l', str(readonly)], check=False)
  from histojax.data import paths  # pylint: disable=g-import-not-at-top
  with pytest.raises(paths.DataError, match='HISTOJAX_CACHE'):
    paths.check_writable(blocker / 'cache')
