"""W/report.md: the run's header, the metrics table of every part, the dataset notes and
curves, then the task's own sections (histojax/tasks/base.py: report_sections)."""
import datetime
import pathlib

from histojax import plots


def write(workdir, config, task, results, final_step, loop, info, extra=(), cost=None):
  """results: {'val': EvalResult, '<test part>': EvalResult, ...} (histojax/tasks/base.py);
  extra: more markdown lines (attribution figures)."""
  workdir = pathlib.Path(workdir)
  curves = plots.curves(workdir, task.curve_metrics)
  parts = list(results)
  # Rows: every metric of any part (GlaS object metrics exist for val/testA/testB, not for the
  # pooled test column), in order of first appearance.
  names = list(dict.fromkeys(k for p in parts for k in results[p].scalars))
  lines = [
      f'# Report: {config.dataset} / {config.model.name}',
      '',
      f'- written: {datetime.datetime.now().isoformat(timespec="seconds")}',
      f'- evaluated checkpoint: step {final_step} ' + (
          f'(best by {config.best_metric}, {config.best_mode}: {loop["best_value"]})'
          if loop['best_step'] is not None else '(the last: no validation score selected one)'),
      f'- early stopped: {loop["stopped_early"]}',
      *([f'- compute: {cost["cost/cpu_seconds"]:.0f} CPU-s '
         f'({cost["cost/cpu_seconds"] / 3600:.2f} core-hours) and '
         f'{cost["cost/wall_seconds"]:.0f} s wall, over {loop.get("starts", 1)} start(s), '
         'this report included'] if cost else []),
      '- validation: carved from the training data; test parts read only for this report',
      '',
      '| metric | ' + ' | '.join(parts) + ' |',
      '|---' * (len(parts) + 1) + '|',
  ]
  for k in names:
    cells = [results[p].scalars.get(k) for p in parts]
    lines.append(f'| {k} | ' + ' | '.join('' if v is None else f'{v:.4f}' for v in cells) + ' |')
  lines += ['', *[f'> {note}' for note in info.get('notes', [])], '',
            f'![curves]({curves.relative_to(workdir)})', '']
  lines += task.report_sections(workdir, results, info)
  lines += list(extra)
  (workdir / 'report.md').write_text('\n'.join(lines) + '\n')
