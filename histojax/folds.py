r"""Summarises a group k-fold cross-validation: one workdir per fold -> mean ± std per metric.

  for i in 0 1 2 3; do
    python launch.py --config=configs/patches_cnn.py:folds=4,fold=$i --workdir=W/fold$i
  done
  python -m histojax.folds W/fold0 W/fold1 W/fold2 W/fold3 [--metrics=accuracy,macro_f1]
         [--out=W/cv.md]

Reads each workdir's final test metrics (the last `test/*` values in metrics.jsonl, i.e. the
best checkpoint's) and config.json, checks that the runs are the folds 0..k-1 of one k-fold
split, and prints a markdown table: one row per fold, then the mean and the sample standard
deviation over folds (each fold weighs the same; every group is tested in exactly one fold).
"""
import argparse
import math
import os
import sys

from histojax import errors, writers
from histojax import workdir as workdir_lib

DEFAULT_METRICS = ('accuracy', 'balanced_accuracy', 'macro_f1', 'weighted_f1',
                   'majority_baseline', 'image_accuracy', 'image_balanced_accuracy',
                   'image_majority_baseline', 'image_count', 'dice', 'mean_iou',
                   'detection_f1', 'count')


def final_metrics(workdir: str, part: str = 'test') -> dict[str, float]:
  """The last value of every `<part>/<name>` key in W/metrics.jsonl, as {name: value}."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no metrics.jsonl (has this fold finished training?)')
  rows = writers.read_jsonl(path)  # tolerates a torn last line; later rows supersede
  found = {k[len(part) + 1:]: v for k, v in writers.latest(rows, part + '/').items()}
  if not found:
    raise ValueError(f'{path}: no {part}/* metrics; the final report of this run is missing '
                     f'(re-run `launch.py --mode=eval --workdir={workdir}`).')
  return found


SAME_SPLIT_KEYS = ('dataset', 'seed', 'data.fractions', 'data.root', 'data.csv', 'data.folds')


def fold_of(workdir: str) -> tuple[int, dict]:
  """(fold, {key: value} of what must agree between folds of one split) from W/config.json."""
  path = os.path.join(workdir, 'config.json')
  config = workdir_lib.read_json(path, 'config')  # a torn file: one clear error
  data = config.get('data', {})
  folds = int(data.get('folds') or 0)
  if folds < 2:
    raise ValueError(f'{path}: data.folds is {folds}; this run is not a cross-validation fold.')
  split = {}
  for key in SAME_SPLIT_KEYS:
    node = config
    for part in key.split('.'):
      node = node.get(part) if isinstance(node, dict) else None
    split[key] = node
  return int(data.get('fold') or 0), split


def summarise(workdirs, metrics=None) -> str:
  """Markdown table over the fold workdirs; raises if they are not one complete k-fold."""
  runs = sorted(((fold_of(w), w) for w in workdirs), key=lambda r: r[0][0])
  first_split, first_dir = runs[0][0][1], runs[0][1]
  for (_, split), w in runs[1:]:
    differ = [key for key in SAME_SPLIT_KEYS if split[key] != first_split[key]]
    if differ:
      raise ValueError(f'{w} and {first_dir} are not folds of one split: they differ in '
                       f'{", ".join(differ)}.')
  k = first_split['data.folds']
  seen = [fold for (fold, _), _ in runs]
  if sorted(seen) != list(range(k)):
    raise ValueError(f'Expected the folds 0..{k - 1} of a {k}-fold split once each, got {seen}.')
  values = [final_metrics(w) for _, w in runs]
  names = [m for m in (metrics or DEFAULT_METRICS) if all(
      isinstance(v.get(m), (int, float)) for v in values)]
  if not names:
    raise ValueError(f'None of the metrics {list(metrics or DEFAULT_METRICS)} is in every fold; '
                     f'available: {sorted(values[0])}.')
  lines = [f'{k}-fold group cross-validation, final test metrics of each fold\'s best '
           'checkpoint', '', '| fold | workdir | ' + ' | '.join(names) + ' |',
           '|---|---|' + '---|' * len(names)]
  for ((fold, _), w), v in zip(runs, values):
    lines.append(f'| {fold} | {w} | ' + ' | '.join(_fmt(v[m]) for m in names) + ' |')
  stats = {m: _mean_std([v[m] for v in values]) for m in names}
  lines.append('| mean ± std (count: total) | | ' + ' | '.join(
      _fmt(sum(v[m] for v in values)) if m == 'count' else f'{_fmt(mu)} ± {_fmt(sd)}'
      for m, (mu, sd) in stats.items()) + ' |')
  return '\n'.join(lines) + '\n'


def _mean_std(xs):
  mean = sum(xs) / len(xs)
  var = sum((x - mean) ** 2 for x in xs) / max(len(xs) - 1, 1)
  return mean, math.sqrt(var)


def _fmt(x):
  return f'{x:.0f}' if float(x).is_integer() and abs(x) >= 10 else f'{x:.3f}'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--metrics', default='', help='comma-separated test metric names')
  parser.add_argument('--out', default='', help='also write the table to this file')
  args = parser.parse_args(argv)
  try:
    table = summarise(args.workdirs, [m for m in args.metrics.split(',') if m] or None)
  except (OSError, ValueError, errors.WorkdirError) as e:
    sys.exit(f'histojax.folds: {e}')
  print(table, end='')
  if args.out:
    with open(args.out, 'w') as f:
      f.write(table)


if __name__ == '__main__':
  main()
