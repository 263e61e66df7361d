"""End-to-end runs of the shared train loop on MNIST `:smoke` (real data, tiny subset)."""
import json
import os
import pathlib
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from absl import flags

from conftest import ROOT, kill_main, launch, require_data

SMOKE = f'--config={ROOT}/configs/mnist_cnn.py:smoke'


@pytest.fixture(autouse=True)
def _mnist():
  require_data('mnist')


def _params(workdir, step=None):
  """Params of a finished run's checkpoint, as numpy (restored without a template)."""
  import orbax.checkpoint as ocp
  directory = pathlib.Path(workdir) / 'checkpoints'
  step = step or max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  path = directory / str(step) / 'state'
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    # A target on this process's one device: the run may have used another topology.
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          ckptr.metadata(path).item_metadata.tree)
    state = ckptr.restore(path, target)
  return jax.tree.map(np.asarray, state['params']), step


def test_smoke_through_launch_main(tmp_path, caplog):
  import launch as launch_module
  flags.FLAGS.unparse_flags()
  # A smoke run has no cpu_recipe; set, the GPU-sized-recipe estimate below is logged.
  flags.FLAGS(['launch.py', SMOKE, f'--workdir={tmp_path}'])
  flags.FLAGS.config.cpu_recipe = 'configs/mnist_cnn.py:cpu'
  launch_module.main(['launch.py'])
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all('step' in r for r in rows)
  assert any('train/loss' in r for r in rows) and any('val/accuracy' in r for r in rows)
  test = next(r for r in rows if 'test/accuracy' in r)
  assert test['test/count'] == 200  # max_eval_examples, every example counted once
  assert test['test/accuracy'] > 0.2  # 20 steps of a tiny CNN: well above chance (0.1)
  for name in ('report.md', 'config.json', 'plots/curves.png', 'plots/confusion_test.png'):
    assert (tmp_path / name).exists(), name
  assert list((tmp_path / 'tensorboard').iterdir())
  text = (tmp_path / 'report.md').read_text()
  assert 'SMOKE RUN' in text and '- commit: ' in text and '- command: `' in text
  assert '| top_predicted_class | ' in text and '2.0000' not in text.split('top_predicted_class')[1][:30]
  # A GPU-sized recipe on a CPU backend estimates its time and names the 2-core recipe.
  estimate = [r.getMessage() for r in caplog.records if 'sized for a GPU' in r.getMessage()]
  assert len(estimate) == 1 and 'configs/mnist_cnn.py:cpu' in estimate[0], estimate


def _run(workdir, *extra, timeout=240):
  proc = launch([SMOKE, f'--workdir={workdir}', *extra], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


LONG = ('--config.total_steps=300', '--config.ckpt_every_steps=20', '--config.log_every_steps=20',
        '--config.eval_every_steps=100')


@pytest.mark.parametrize('workers', [0, 2])
def test_exact_resume_after_sigkill(tmp_path, workers):
  """A run killed (SIGKILL, whole process group) mid-way and resumed ends bit-identical,
  with the input pipeline in-process or in grain worker processes."""
  args = (*LONG, f'--config.data.workers={workers}')
  rc, out = _run(tmp_path / 'straight', *args)
  assert rc == 0, out[-3000:]
  reference, _ = _params(tmp_path / 'straight')

  workdir = tmp_path / 'killed'
  proc = launch([SMOKE, f'--workdir={workdir}', *args], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  ckpt_dir = workdir / 'checkpoints'
  while time.time() < deadline and not (ckpt_dir.exists() and any(
      p.name.isdigit() for p in ckpt_dir.iterdir())):
    time.sleep(0.05)
  assert proc.poll() is None, 'run finished before it could be killed'
  kill_main(proc)
  saved = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
  assert saved and max(saved) < 300

  rc, out = _run(workdir, *args)
  assert rc == 0, out[-3000:]
  assert 'Resumed from' in out
  resumed, step = _params(workdir)
  assert step == 300
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = launch([SMOKE, f'--workdir={tmp_path}', *LONG, '--config.total_steps=100000'],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  # Once training runs: a stop before the first step has nothing to save and saves nothing
  # (tests/test_console.py).
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 180
  while time.time() < deadline and not (metrics.exists() and 'train/loss' in metrics.read_text()):
    time.sleep(0.05)
  time.sleep(1.0)
  os.kill(proc.pid, signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGTERM: saved step' in out
  step = int(out.split('SIGTERM: saved step ')[1].split(';')[0])
  assert (tmp_path / 'checkpoints' / str(step)).is_dir()
  assert not (tmp_path / 'report.md').exists()


def test_at_most_two_train_steps_are_in_flight(tmp_path, monkeypatch):
  """The loop waits for step n-1 before it dispatches step n+1: the CPU backend would
  otherwise queue many steps ahead of the one computing, and a SIGTERM (saved at the
  dispatched step) or a NaN (found at the next log) would wait for the whole queue."""
  from configs import mnist_cnn
  from histojax import train
  config = mnist_cnn.get_config('smoke')
  config.model.features = (32, 64, 128, 128, 256)  # a step slower than its dispatch
  config.total_steps, config.log_every_steps, config.eval_every_steps = 12, 12, 12
  real_jit, dispatched, unfinished = jax.jit, [], []

  def jit(fn, *args, **kwargs):
    compiled = real_jit(fn, *args, **kwargs)
    if getattr(fn, '__name__', '') != 'train_step':
      return compiled

    def step(*step_args):  # steps before the previous one must be done by now
      unfinished.append(sum(not m.is_ready() for m in dispatched[:-1]))
      state, metrics = compiled(*step_args)
      dispatched.append(metrics['loss'])
      return state, metrics
    return step
  monkeypatch.setattr(jax, 'jit', jit)
  train.train_and_evaluate(config, tmp_path)
  assert len(unfinished) == 12 and max(unfinished) == 0, unfinished


def test_nonfinite_loss_stops_and_sets_aside_the_checkpoints_that_led_to_it(tmp_path):
  rc, out = _run(tmp_path, '--config.optimizer.lr=1e30', '--config.ckpt_every_steps=1',
                 '--config.log_every_steps=1')
  assert rc != 0
  assert 'Non-finite training loss at step' in out
  bad = int(out.split('Non-finite training loss at step ')[1].split('.')[0])
  steps = [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]
  assert all(s < bad - 1 for s in steps)  # loss at step k comes from checkpoint k-1
  aside = [p.name for p in (tmp_path / 'checkpoints_diverged').iterdir()]
  assert aside  # kept, not deleted


def test_unknown_config_key_is_named(tmp_path):
  rc, out = _run(tmp_path, '--config.not_a_key=3')
  assert rc != 0 and 'not_a_key' in out
  rc, out = _run(tmp_path, '--config.optimizer.lrr=3')
  assert rc != 0 and 'lrr' in out


def test_missing_data_folder_gives_one_clear_error(tmp_path):
  proc = launch([SMOKE, f'--workdir={tmp_path / "w"}'], env={'HISTOJAX_DATA': str(tmp_path)},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert f"Dataset 'mnist' not found at {tmp_path / 'mnist'}" in out
  assert 'never downloads' in out


def test_early_stopping_and_eval_mode(tmp_path):
  """lr=0: validation never improves, so patience 1 stops at the 2nd evaluation and the
  report uses the first (best) checkpoint; --mode=eval reproduces the same test numbers."""
  from configs import mnist_cnn
  from histojax import train
  config = mnist_cnn.get_config('smoke')
  config.optimizer.lr = 0.0
  config.model.batch_norm = False  # BN statistics would still move with lr=0
  config.early_stopping_patience = 1
  config.eval_every_steps, config.total_steps = 5, 20
  results = train.train_and_evaluate(config, tmp_path)
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'val/accuracy' in r] == [5, 10]
  assert next(r for r in rows if 'test/accuracy' in r)['step'] == 5
  assert 'early stopped: yes' in (tmp_path / 'report.md').read_text()
  again = train.train_and_evaluate(config, tmp_path, mode='eval')
  assert again['test'] == results['test']


def test_fields_that_default_to_none_are_overridable_and_steps_win():
  from ml_collections import config_flags
  from histojax import schedules
  argv = ['launch.py', f'--config={ROOT}/configs/nuclei_cnn.py', '--config.total_steps=7',
          '--config.eval_every_steps=3', '--config.init_from=/some/run',
          '--config.data.max_source_images=5']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, sys_argv=argv)
  values(argv)
  config = values.config
  assert (config.total_steps, config.eval_every_steps, config.init_from,
          config.data.max_source_images) == (7, 3, '/some/run', 5)
  assert config.total_epochs == 30  # still set: steps take precedence
  assert schedules.steps('total', config, steps_per_epoch=100) == 7
  assert schedules.steps('ckpt_every', config, steps_per_epoch=100) == 100
