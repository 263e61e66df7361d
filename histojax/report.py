"""W/report.md and PNG plots (training curves, confusion matrix)."""
import datetime
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from histojax import writers


def plot_curves(workdir, names):
  """One panel per metric name: train and val curves from metrics.jsonl."""
  rows = writers.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
  for ax, name in zip(axes[0], names):
    for split in ('train', 'val'):
      pts = [(r['step'], r[f'{split}/{name}']) for r in rows if f'{split}/{name}' in r]
      if pts:
        ax.plot(*zip(*pts), label=split, marker='.' if split == 'val' else None)
    ax.set_xlabel('step')
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  path = pathlib.Path(workdir) / 'plots' / 'curves.png'
  path.parent.mkdir(exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_confusion(workdir, matrix, class_names, name='confusion_test.png'):
  matrix = np.asarray(matrix)
  fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(matrix), 0.8 + 0.5 * len(matrix)))
  ax.imshow(matrix, cmap='Blues')
  for (i, j), v in np.ndenumerate(matrix):
    ax.text(j, i, str(v), ha='center', va='center', fontsize=7,
            color='white' if v > matrix.max() / 2 else 'black')
  ax.set_xticks(range(len(matrix)), class_names, rotation=90)
  ax.set_yticks(range(len(matrix)), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  fig.tight_layout()
  path = pathlib.Path(workdir) / 'plots' / name
  path.parent.mkdir(exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write(workdir, config, results, final_step, loop, info):
  workdir = pathlib.Path(workdir)
  class_names = info.get('class_names') or [str(i) for i in range(info['num_classes'])]
  curves = plot_curves(workdir, ['loss', 'accuracy'])
  confusion = plot_confusion(workdir, results['test'][1], class_names)
  lines = [
      f'# Report: {config.get("dataset", "")} / {config.model.name}',
      '',
      f'- written: {datetime.datetime.now().isoformat(timespec="seconds")}',
      f'- evaluated checkpoint: step {final_step} (best by {config.best_metric}, '
      f'{config.best_mode}: {loop["best_value"]})',
      f'- early stopped: {loop["stopped_early"]}',
      '',
      '| metric | validation | test |',
      '|---|---|---|',
  ]
  val, test = results['val'][0], results['test'][0]
  for k in test:
    lines.append(f'| {k} | {val.get(k, float("nan")):.4f} | {test[k]:.4f} |')
  lines += ['', *[f'> {note}' for note in info.get('notes', [])], '',
            f'![curves]({curves.relative_to(workdir)})', '',
            f'![confusion]({confusion.relative_to(workdir)})', '',
            'Test confusion matrix (rows: true, columns: predicted):', '', '```',
            np.array2string(np.asarray(results['test'][1]), max_line_width=200), '```', '']
  (workdir / 'report.md').write_text('\n'.join(lines))
