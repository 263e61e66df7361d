"""W/sweep.md and its figures, from the study alone: any process can write them again.

  python -m histojax.sweep_report --storage=URL --study_name=NAME --out=DIR
"""
import datetime
import logging
import pathlib
import shlex
import warnings

import numpy as np

from histojax import report


def _value(v):
  return shlex.quote(repr(v) if isinstance(v, float) else str(v))


def override_line(study, params, workdir='W_best'):
  """The best trial as one runnable command: the sweep's config and overrides, then its
  parameters as --config. overrides."""
  args = ' '.join(f'--config.{k}={_value(v)}' for k, v in params.items())
  return f'{study.user_attrs.get("command", "python launch.py")} {args} --workdir={workdir}'


def _note(t, retried_as):
  notes = []
  if t.number in retried_as:
    notes.append(f'interrupted; retried as {retried_as[t.number]}')
  if 'retry_of' in t.user_attrs:
    notes.append(f'retry of {t.user_attrs["retry_of"]}')
  if 'resumed_from_step' in t.user_attrs:
    notes.append(f'resumed at step {t.user_attrs["resumed_from_step"]}')
  if t.user_attrs.get('enqueued'):
    notes.append('enqueued')
  if 'pruned' in t.user_attrs:
    notes.append(f'pruned: {t.user_attrs["pruned"]}')
  if 'error' in t.user_attrs:
    notes.append(f'error: {t.user_attrs["error"]}')
  return '; '.join(notes).replace('|', '/').replace('\n', ' ')


def _duration(t):
  if t.datetime_start is None or t.datetime_complete is None:
    return ''
  return f'{(t.datetime_complete - t.datetime_start).total_seconds() / 60:.1f}'


def figures(study, out_dir):
  """Optimisation history, metric against each parameter, parameter importances (Optuna's
  matplotlib plots) as PNGs; {name: path or the reason it is missing}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as ovm  # pylint: disable=g-import-not-at-top
  logging.getLogger('matplotlib.category').setLevel(logging.WARNING)  # categorical axes
  out_dir.mkdir(parents=True, exist_ok=True)
  made = {}
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  plots = {'history': ovm.plot_optimization_history, 'slice': ovm.plot_slice,
           'importance': ovm.plot_param_importances}
  for name, plot in plots.items():
    if name == 'importance' and len(complete) < 2:
      made[name] = 'needs 2 complete trials'
      continue
    if not complete:
      made[name] = 'no complete trial'
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # Optuna's "experimental" ones
        axes = plot(study)
        figure = np.ravel(axes)[0].get_figure()
        # Optuna lays out its own axes and colour bar: only widen, one panel per parameter.
        figure.set_size_inches(max(6.4, 4.2 * np.size(axes) + 1.5), 4.5)
      path = out_dir / f'sweep_{name}.png'
      figure.savefig(path, dpi=100, bbox_inches='tight')
      plt.close('all')
      made[name] = path
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
      made[name] = f'not drawn: {e}'
      plt.close('all')
  return made


def write(study, workdir, storage, metric, out=None):
  """W/sweep.md: settings, the trials table, the best trial (its test parts if scored) and
  its command line, and the figures. Returns the path."""
  workdir = pathlib.Path(workdir)
  out = pathlib.Path(out or workdir)
  attrs = study.user_attrs
  trials = study.get_trials(deepcopy=False)
  states = {}
  for t in trials:
    states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
  keys = [p['key'] for p in attrs.get('space', [])]
  lines = [f'# Sweep: {study.study_name}', '',
           f'- written: {datetime.datetime.now().isoformat(timespec="seconds")}',
           f'- storage: {storage}',
           f'- config: {attrs.get("config")}; trials run: `{attrs.get("command")}` + params',
           f'- metric: final_val/{metric} ({attrs.get("direction")}), the selected checkpoint\'s '
           'validation report; the pruner saw val/' + metric + ' after each evaluation',
           f'- trials: {attrs.get("num_trials")} asked; ' +
           ', '.join(f'{n} {s}' for s, n in sorted(states.items())),
           '- space: ' + '; '.join(_space(p) for p in attrs.get('space', [])), '']
  cpu = sum(t.user_attrs.get('cpu_seconds', 0.0) for t in trials)
  lines.append(f'- compute: {cpu:.0f} CPU-s ({cpu / 3600:.2f} core-hours) over all trials '
               '(this machine\'s and the others\' workers)')
  lines.append('')
  try:
    best = study.best_trial
  except ValueError:
    best = None
  if best is not None:
    lines += [f'## Best: trial {best.number}, final_val/{metric} = {report.fmt(best.value)}', '',
              '```', override_line(study, best.params), '```', '']
    tested = attrs.get('best_test') or {}
    if tested.get('trial') == best.number:
      for part, scalars in tested['results'].items():
        lines.append(f'- {part}/{metric}: {report.fmt(scalars.get(metric))} (test read once, '
                     'for this trial only)')
    else:
      lines.append('- test: not scored yet (the best trial ran on another machine: run the '
                   'sweep command again there)')
    earlier = [n for n in attrs.get('tested', []) if n != best.number]
    if earlier:
      lines.append(f'- test parts were also read for trials {earlier}, each the best when '
                   'its sweep ended (the study was extended since)')
    lines.append('')
  lines += ['## Trials', '',
            '| # | state | ' + ' | '.join(f'`{k}`' for k in keys) +
            f' | final_val/{metric} | epochs evaluated | minutes | CPU-s | host | notes |',
            '|---' * (len(keys) + 8) + '|']
  retried_as = {t.user_attrs['retry_of']: t.number for t in trials
                if 'retry_of' in t.user_attrs}
  for t in trials:
    params = ' | '.join(f'{t.params[k]:.3g}' if isinstance(t.params.get(k), float)
                        else str(t.params.get(k, '')) for k in keys)
    epochs = f'{max(t.intermediate_values) / 100:g}' if t.intermediate_values else ''
    complete = t.state.name == 'COMPLETE'  # a pruned trial's value is its last val/<m>
    value = report.fmt(t.value) if complete and t.value is not None else ''
    lines.append(f'| {t.number} | {t.state.name.lower()} | {params} | {value} | {epochs} | '
                 f'{_duration(t)} | {t.user_attrs.get("cpu_seconds", 0):.0f} | '
                 f'{t.user_attrs.get("host", "")} | {_note(t, retried_as)} |')
  lines.append('')
  for name, made in figures(study, out / 'plots').items():
    if isinstance(made, pathlib.Path):
      lines += [f'![{name}]({made.relative_to(out)})', '']
    else:
      lines += [f'- {name} figure: {made}', '']
  lines += ['Re-write this file from the study: `python -m histojax.sweep_report '
            f'--storage={storage} --study_name={shlex.quote(study.study_name)} --out=DIR`.', '']
  path = out / 'sweep.md'
  tmp = path.with_suffix('.md.tmp')
  tmp.write_text('\n'.join(lines), encoding='utf-8')
  tmp.replace(path)
  return path


def _space(p):
  if p['type'] == 'categorical':
    return f'`{p["key"]}` in {list(p["choices"])}'
  scale = ' log' if p.get('log') else ''
  step = f' step {p["step"]}' if p['type'] == 'int' and p.get('step', 1) != 1 else ''
  return f'`{p["key"]}` {p["type"]}{scale} [{p["low"]}, {p["high"]}]{step}'


def main():
  import argparse  # pylint: disable=g-import-not-at-top
  import optuna  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--storage', required=True)
  parser.add_argument('--study_name', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  from histojax import sweep_storage, sweep_spec  # pylint: disable=g-import-not-at-top
  study = optuna.load_study(study_name=args.study_name,
                            storage=sweep_storage.open_storage(args.storage))
  metric = sweep_spec.metric_name(study.user_attrs['metric'], 'the study')
  print(write(study, args.out, sweep_storage.redact(args.storage), metric, out=args.out))


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO)
  main()
