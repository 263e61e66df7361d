"""What the console says while a run goes (first step, rate, ETA, short validation lines,
evaluation progress, the report's path), Ctrl-C/SIGTERM honoured within seconds wherever the
run is (XLA compilation, worker start, evaluation), data.workers='auto', and a finished run
that is started again."""
import json
import logging
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, kill_group, launch, require_data

from histojax import errors, train, writers
from histojax import workdir as workdir_lib
from histojax.data import pipeline

MNIST = f'--config={ROOT}/configs/mnist_cnn.py:smoke'
# A five-level U-Net: its first train step compiles for several seconds on a CPU (7 s here).
UNET = (f'--config={ROOT}/configs/warwick_unet.py:smoke', '--config.model.features=(4,8,16,32,64)')


# ------------------------------------------------------------------------- formatting


def test_rates_and_durations_read_naturally():
  assert writers.format_rate(12.34, 'step') == '12.3 steps/s'
  assert writers.format_rate(0.238, 'step') == '4.2 s/step'  # never '0.0 steps/s'
  assert writers.format_rate(1.3, 'image') == '1.3 images/s'
  assert [writers.format_duration(s) for s in (45, 750, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] \
      == ['45s', '12m30s', '3h05m', '2d04h']


def test_validation_line_leads_with_the_selection_metric_and_stays_short():
  val = {'val/loss': 0.2345678, 'val/count': 200.0, 'val/accuracy': 0.91, 'val/dice': 0.8123,
         'val/macro_f1': 0.5, 'val/balanced_accuracy': 0.7, 'val/mean_iou': 0.6,
         'val/object_f1': 0.4, **{f'val/f1_{i}': 0.5 for i in range(40)}}
  loop = {'best_step': 600, 'best_value': 0.8123}
  line = writers.val_line(600, val, loop, 'val/dice')
  assert line.startswith('step 600 | val dice 0.8123 (best 0.8123 @600) | loss 0.2346 '), line
  assert 'count' not in line and 'f1_0' not in line and len(line) <= 160
  assert len(line.split(' | ')[2].split()) == 8  # four key scalars, name and value each
  assert writers.val_line(5, {'val/accuracy': float('nan')}, {'best_step': None},
                        'val/accuracy') == 'step 5 | val accuracy nan (no best yet)'


# ---------------------------------------------------------------------- data.workers


def test_workers_auto_follows_the_usable_cpus_and_bad_values_name_the_key(monkeypatch):
  for cpus, workers in ((1, 0), (2, 0), (4, 2), (16, 8), (64, 8)):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda _, n=cpus: set(range(n)))
    assert pipeline.resolve_workers('auto') == workers, cpus
  assert pipeline.resolve_workers('3') == 3 and pipeline.resolve_workers(2) == 2
  for bad in ('many', '-1', '1.5', 1.5, -2, True, None):
    with pytest.raises(errors.ConfigError, match='data.workers'):
      pipeline.resolve_workers(bad)


def test_a_resume_may_change_data_workers(tmp_path):
  """data.workers is a run-time key: a workdir saved with 0 (before 'auto' existed) or with
  'auto' resumes with any other value."""
  from configs import mnist_cnn
  config = mnist_cnn.get_config('smoke')
  for saved, new in ((0, 'auto'), ('auto', '2'), ('2', '0')):
    old = json.loads(config.to_json())
    old['data']['workers'] = saved
    workdir_lib.write_json_atomic(tmp_path / 'config.json', old)
    config.data.workers = new
    accepted = workdir_lib.accept_config(tmp_path, config, 'train', has_checkpoint=True)
    assert accepted.data.workers == new


# -------------------------------------------------------- the console of a whole run


def _ours(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno >= logging.INFO and f'{os.sep}histojax{os.sep}' in r.pathname]


def test_console_lines_and_a_finished_run_started_again(tmp_path, caplog, monkeypatch):
  """First-step line, rate, evaluation progress (every call here), the report's path last;
  the same run started again logs its final numbers from W/final.json and writes no rows;
  a larger total_steps trains on and reports anew."""
  require_data('mnist')
  from configs import mnist_cnn
  monkeypatch.setattr(train, 'EVAL_LOG_S', 0.0)
  config = mnist_cnn.get_config('smoke')
  config.total_steps, config.eval_batch_size = 10, 64
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, tmp_path)
  lines = _ours(caplog)
  assert any(l.startswith('step 1/10 | compiled and ran the first step in ') for l in lines)
  assert any(l.startswith('step 10/10 | ') and ('steps/s | ETA' in l or 's/step | ETA' in l)
             for l in lines), lines
  assert 'eval val: 64/200 images (' in caplog.text and 'ETA' in caplog.text
  assert any(l.startswith('step 10 | val accuracy ') and '(best ' in l for l in lines)
  assert lines[-1] == f'Report: {tmp_path / "report.md"}', lines[-3:]
  assert not any('Params fingerprint' in l for l in lines)  # DEBUG for one process
  final = json.loads((tmp_path / 'final.json').read_text())
  assert final['final_step'] == 10 and final['complete'] and set(final['results']) == set(results)

  rows = (tmp_path / 'metrics.jsonl').read_text()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    again = train.train_and_evaluate(config, tmp_path)
  assert again == results
  assert (tmp_path / 'metrics.jsonl').read_text() == rows  # no duplicate final rows
  lines = _ours(caplog)
  assert lines[0] == f'Already finished (step 10); report: {tmp_path / "report.md"}', lines
  assert sum(l.startswith('Final (step 10): ') for l in lines) == len(results)

  config.total_steps = 15  # extended: trains on and reports anew
  train.train_and_evaluate(config, tmp_path)
  assert json.loads((tmp_path / 'final.json').read_text())['last_step'] == 15
  assert any(r['step'] == 15 and 'val/accuracy' in r
             for r in writers.read_jsonl(tmp_path / 'metrics.jsonl'))


# -------------------------------------------------------------------- SIGTERM anywhere


def _signal_at(args, marker, delay=0.0, timeout=30):
  """Starts launch.py, sends SIGTERM `delay` s after the first output line holding `marker`;
  returns (status, output, seconds from the signal to the exit)."""
  proc = launch(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if marker in line:
        time.sleep(delay)
        sent = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        break
    else:
      pytest.fail(f'{marker!r} never logged:\n' + ''.join(lines)[-3000:])
    rest, _ = proc.communicate(timeout=timeout)
    return proc.returncode, ''.join(lines) + rest, time.time() - sent
  finally:
    kill_group(proc)


def _group_gone(proc_pid, timeout=10.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      os.killpg(proc_pid, 0)
    except ProcessLookupError:
      return True
    time.sleep(0.1)
  return False


def test_sigterm_during_xla_compilation_exits_within_seconds(tmp_path):
  """The main thread is inside XLA compilation (C++: no Python handler runs there): the
  watcher thread ends the run, saving nothing since nothing is new."""
  require_data('glas')
  rc, out, seconds = _signal_at([*UNET, f'--workdir={tmp_path}'], 'Model:', delay=1.0)
  assert rc == 0, out[-3000:]
  line = next(l for l in out.splitlines() if 'SIGTERM during' in l)
  assert 'stopping.py' in line, line  # the watcher, not the main thread after the compile
  assert line.endswith('SIGTERM during start-up/compilation: nothing new since step 0 to save; '
                       'exiting.'), line
  assert seconds < 10, seconds
  assert not [p for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]


def test_sigterm_while_data_workers_start_ends_them_too(tmp_path):
  require_data('mnist')
  proc_args = [MNIST, f'--workdir={tmp_path}', '--config.data.workers=2']
  proc = launch(proc_args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    for line in proc.stdout:
      if 'Model:' in line:
        os.kill(proc.pid, signal.SIGTERM)
        break
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    # Either the watcher ended it while the workers started, or the first step beat it.
    assert ('nothing new since step 0 to save; exiting.' in out
            or 'SIGTERM: saved step 1;' in out), out[-3000:]
    assert _group_gone(proc.pid), 'grain workers outlived the run'
  finally:
    kill_group(proc)


def test_sigterm_during_evaluation_saves_and_the_rerun_evaluates_that_step_first(tmp_path):
  require_data('mnist')
  args = [MNIST, f'--workdir={tmp_path}', '--config.eval_batch_size=8']
  rc, out, seconds = _signal_at(args, 'step 20/20 |')
  assert rc == 0, out[-3000:]
  assert 'SIGTERM during evaluation: saved step 20;' in out, out[-3000:]
  assert seconds < 10 and (tmp_path / 'checkpoints' / '20').is_dir()
  assert not (tmp_path / 'report.md').exists()
  # --mode=eval meanwhile reports step 20 but says its evaluation is still owed.
  proc = launch(args + ['--mode=eval'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and 'saved by a stop during its validation evaluation' in out, (
      out[-3000:])

  proc = launch(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert 'Resumed from' in out and 'step 20 | val accuracy' in out
  rows = writers.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in rows if 'val/accuracy' in r] == [10, 20]  # each evaluated once
  assert (tmp_path / 'report.md').exists()
  # The re-run evaluation updated step 20's saved loop state (the checkpoint existed): it no
  # longer asks for that evaluation, and it names the best step the report used.
  loop = json.loads((tmp_path / 'checkpoints' / '20' / 'loop' / 'metadata').read_text())
  assert 'eval_interrupted' not in loop['loop']
  best = loop['loop']['best_step']
  assert best in (10, 20) and (tmp_path / 'checkpoints' / str(best)).is_dir()
  assert f'evaluated checkpoint: step {best} (best by val/accuracy' in (
      tmp_path / 'report.md').read_text()
