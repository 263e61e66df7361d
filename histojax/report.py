"""W/report.md: the run's header (command, commit, versions, devices, steps, compute), the
metrics table of every part, the dataset notes and curves, then the task's own sections
(histojax/tasks/base.py: report_sections)."""
import datetime
import importlib.metadata
import pathlib
import shlex
import subprocess
import sys

import jax

from histojax import plots

PACKAGES = ('jax', 'flax', 'optax', 'orbax-checkpoint', 'grain')


def command_line():
  """How this process was started, as a shell line (`python launch.py --config=...`)."""
  argv = list(getattr(sys, 'orig_argv', sys.argv))
  if argv and pathlib.Path(argv[0]).name.startswith('python'):
    argv[0] = 'python'
  return ' '.join(shlex.quote(a) for a in argv)


def git_commit():
  """The histojax checkout's commit (with '+ uncommitted changes' when dirty), or 'not a
  git checkout'."""
  root = pathlib.Path(__file__).resolve().parent.parent
  try:
    run = lambda *a: subprocess.run(['git', '-C', str(root), *a], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
    commit = run('rev-parse', '--short=12', 'HEAD')
    dirty = bool(run('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return 'not a git checkout'
  return commit + (' + uncommitted changes' if dirty else '')


def versions():
  out = []
  for name in PACKAGES:
    try:
      out.append(f'{name} {importlib.metadata.version(name)}')
    except importlib.metadata.PackageNotFoundError:
      out.append(f'{name} (not installed)')
  return ', '.join(out)


def fmt(value, key=''):
  """A metric for a table: counts and class indices (keys ending in count / _class, or
  empty_skipped_*) as integers, everything else to 4 decimals."""
  if value is None:
    return ''
  value = float(value)
  if value != value:
    return 'n/a'
  whole = value.is_integer() and (key.endswith(('count', '_class'))
                                  or key.startswith('empty_skipped'))
  return str(int(value)) if whole else f'{value:.4f}'


def header(config, final_step, loop, cost, steps_trained):
  devices = jax.devices()
  chosen = (f'step {final_step} (best by {config.best_metric}, {config.best_mode}: '
            f'{fmt(loop["best_value"])})' if loop['best_step'] is not None else
            f'step {final_step} (the last: no validation score selected one)')
  lines = [
      f'# Report: {config.dataset} / {config.model.name}', '',
      *(['> **SMOKE RUN**: a few steps on a data subset, to check that everything runs. '
         'Its numbers say nothing about the model.', ''] if config.smoke else []),
      f'- command: `{command_line()}`',
      f'- commit: {git_commit()}',
      f'- versions: python {sys.version.split()[0]}, {versions()}',
      f'- devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), '
      f'{jax.process_count()} process(es)',
      f'- written: {datetime.datetime.now().isoformat(timespec="seconds")}',
      f'- steps trained: {steps_trained}; evaluated checkpoint: {chosen}',
      f'- early stopped: {"yes" if loop["stopped_early"] else "no"}',
  ]
  if cost:
    lines.append(f'- compute: {cost["cost/wall_seconds"] / 60:.1f} min wall, '
                 f'{cost["cost/cpu_seconds"]:.0f} CPU-s ({cost["cost/cpu_seconds"] / 3600:.2f} '
                 f'core-hours), over {loop.get("starts", 1)} start(s), this report included')
  lines.append('- validation: carved from the training data; test parts read only for this '
               'report' if config.final_test else '- validation only (final_test=False: a '
               'sweep trial; the sweep scores the test parts of its best trial once, at its '
               'end)')
  return lines


def write(workdir, config, task, results, final_step, loop, info, extra=(), cost=None,
          steps_trained=None):
  """results: {'val': EvalResult, '<test part>': EvalResult, ...} (histojax/tasks/base.py);
  extra: more markdown lines (attribution figures)."""
  workdir = pathlib.Path(workdir)
  curves = plots.curves(workdir, task.curve_metrics, selection=config.best_metric,
                        chosen_step=final_step if loop['best_step'] is not None else None)
  parts = list(results)
  # Rows: every metric of any part (GlaS object metrics exist for val/testA/testB, not for the
  # pooled test column), in order of first appearance.
  names = list(dict.fromkeys(k for p in parts for k in results[p].scalars))
  lines = header(config, final_step, loop, cost,
                 final_step if steps_trained is None else steps_trained)
  lines += ['', '| metric | ' + ' | '.join(parts) + ' |', '|---' * (len(parts) + 1) + '|']
  for k in names:
    cells = [results[p].scalars.get(k) for p in parts]
    lines.append(f'| {k} | ' + ' | '.join(fmt(v, k) for v in cells) + ' |')
  lines += ['', *[f'> {note}' for note in info.get('notes', [])], '',
            f'![curves]({curves.relative_to(workdir)})', '',
            f'Curves: train and val of {", ".join(task.curve_metrics)} and the selection '
            f'metric {config.best_metric}; the star marks the evaluated checkpoint.', '']
  lines += task.report_sections(workdir, results, info)
  lines += list(extra)
  (workdir / 'report.md').write_text('\n'.join(lines) + '\n')
