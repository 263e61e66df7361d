"""The end of a run: the chosen checkpoint scored on val and the test parts, the report, and
W/final.json, the record that lets a re-run of the finished command report without
evaluating (and appending the final rows) again."""
import contextlib
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from histojax import plots, report, writers
from histojax import workdir as workdir_lib

# Keys that change neither the trained state nor the report: a re-run that differs only in
# them is still the finished run that W/final.json records.
REPORT_NEUTRAL = ('data.workers', 'log_every_steps', 'ckpt_keep', 'cpu_recipe')


def log_final(final_step, results, report_path, best_metric):
  """The `Final (step N)` lines, one per part: the selection metric and a few key ones (every
  metric is in report.md and metrics.jsonl), then the report's path as the run's last line."""
  keys = (best_metric.split('/', 1)[-1], *writers.KEY_SCALARS, 'count')
  for part, scalars in results.items():
    shown = [k for k in dict.fromkeys(keys) if k in scalars][:6]
    logging.info('Final (step %d): %s %s', final_step, part,
                 ' '.join(f'{k} {report.fmt(scalars[k], k)}' for k in shown))
  if report_path is not None:
    logging.info('Report: %s', report_path)


def already_finished(workdir, config, ckpts):
  """{part: scalars} of W/final.json when it records this very run, finished: re-running its
  command then logs them again rather than evaluating anew (which would append the final rows
  to metrics.jsonl and TensorBoard once more). None when there is no record (one process
  only: hosts would have to agree), the checkpoints moved on since, the run was not complete,
  the report is gone, or the config differs (e.g. a larger total_steps: the run trains on and
  reports anew)."""
  path = workdir / 'final.json'
  if jax.process_count() > 1 or not path.exists():
    return None
  try:
    final = json.loads(path.read_text(encoding='utf-8'))
    final_step, last_step = int(final['final_step']), final['last_step']
    complete = final['complete']
    results = {part: {k: float('nan') if v is None else float(v) for k, v in scalars.items()}
               for part, scalars in final['results'].items()}
    changed = [k for k in workdir_lib.changes(final['config'], config.to_dict())
               if k not in REPORT_NEUTRAL]
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    logging.warning('%s is unreadable (%s); ignored: the run reports anew.', path, e)
    return None
  if (not complete or last_step != ckpts.latest_step()
      or not (workdir / 'report.md').exists()):
    return None
  if changed:
    logging.info('%s was reported with another config (%s differ); training on as needed and '
                 'reporting anew.', path, ', '.join(changed))
    return None
  logging.info('Already finished (step %d); report: %s', final_step, workdir / 'report.md')
  log_final(final_step, results, workdir / 'report.md', config.best_metric)
  return results


def final_report(config, workdir, task, model, state, splits, evaluate, writer, loop, cost,
                 record, uninterruptible=contextlib.nullcontext):
  """The selected checkpoint scored on val (post-processing chosen there), then on every test
  part (read only here); W/report.md, W/postprocess.json, and W/final.json (`record` plus the
  results, which a re-run of the finished run returns); `config.final_test` False: val only.
  The final rows and final.json are written inside `uninterruptible()` (the stop watcher
  waits for it). Returns {part: scalars}."""
  is_main = jax.process_index() == 0
  final_step = int(state.step)
  started = time.time()
  results = {}
  # The final rows are written at the end, next to final.json: a report stopped half-way
  # appends none, so its re-run does not repeat them.
  rows = []
  postprocess = None  # the config's, when there is no val to choose on
  if len(splits.val):
    results['val'] = task.select_on_val(evaluate(state, splits.val, part='val'))
    postprocess = results['val'].postprocess
    rows.append({f'final_val/{k}': v for k, v in results['val'].scalars.items()})
    if is_main:  # before any test part is read; --mode=predict applies the same
      workdir_lib.write_json_atomic(workdir / 'postprocess.json', postprocess)
  tests = splits.tests if config.final_test else {}  # final_test=False: a sweep's trial
  if not tests:
    logging.info('final_test=False: validation only; the test parts are not read.')
  for part, source in tests.items():
    results[part] = evaluate(state, source, postprocess, part=part)
    rows.append({f'{part}/{k}': v for k, v in results[part].scalars.items()})
  pooled = task.pool_tests([results[p] for p in tests]) if len(tests) > 1 else None
  if pooled is not None:
    results['test'] = pooled
    rows.append({f'test/{k}': v for k, v in pooled.scalars.items()})
  extra = []
  if is_main:
    if 'val' not in results and results:  # the config's settings, as the test parts were scored
      workdir_lib.write_json_atomic(workdir / 'postprocess.json',
                                    next(iter(results.values())).postprocess)
    if tests:
      part = next(iter(tests))
      extra = task.explain(model, state, tests[part], workdir, part)
  totals = cost.scalars('cost')  # the whole run: every start, dataset build, this report
  rows.append(totals)
  scalars = {part: result.scalars for part, result in results.items()}
  report_path = None
  if is_main:
    report.write(workdir, config, task, results, final_step, loop, splits.info, extra,
                 cost=totals, steps_trained=record['last_step'])
    report_path = workdir / 'report.md'
  with uninterruptible():
    for row in rows:
      writer.write(final_step, row)
    if is_main:
      plain = {part: {k: float(v) if np.isfinite(v) else None for k, v in values.items()}
               for part, values in scalars.items()}
      workdir_lib.write_json_atomic(workdir / 'final.json', {
          'final_step': final_step, **record, 'report': str(report_path), 'results': plain,
          'config': json.loads(config.to_json())})
  if is_main:
    # TensorBoard gets this report's figures (confusion matrices, panels, attributions, curves).
    writer.write_images(final_step, {f'report/{p.stem}': plots.png_array(p)
                                     for p in sorted((workdir / 'plots').glob('*.png'))
                                     if p.stat().st_mtime >= started - 1})
  # Hosts of one run compare it (tests/test_multidevice.py); one process has no use for it.
  logging.log(logging.INFO if jax.process_count() > 1 else logging.DEBUG,
              'Params fingerprint (process %d): %.10e', jax.process_index(),
              float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(state.params))))
  log_final(final_step, scalars, report_path, config.best_metric)
  return scalars
