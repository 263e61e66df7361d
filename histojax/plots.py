"""Every PNG figure of a report: training curves, confusion matrices, segmentation panels,
attribution overlays. Each takes arrays and where to write, and returns the PNG's path.
Label maps are drawn in the one overlay style of histojax/overlay.py."""
import pathlib

import matplotlib
matplotlib.use('Agg')
from matplotlib import patches  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from histojax import export, overlay, writers


def _save(fig, workdir, name, dpi=100, rect=None):
  fig.tight_layout(rect=rect)
  path = pathlib.Path(workdir) / 'plots' / name
  path.parent.mkdir(exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def curves(workdir, names, selection=None, chosen_step=None):
  """One panel per metric name: train and val curves from metrics.jsonl. `selection` (e.g.
  'val/weighted_f1', the config's best_metric) gets a panel of its own when it is not among
  them, and `chosen_step` (the evaluated checkpoint) a marker on every val curve."""
  rows = writers.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
  panels = [(name, ('train', 'val')) for name in names]
  if selection and selection.split('/', 1)[-1] not in names:
    panels.append((selection.split('/', 1)[-1], (selection.split('/', 1)[0],)))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
  for ax, (name, splits) in zip(axes[0], panels):
    for split in splits:
      pts = writers.by_step(rows, f'{split}/{name}')  # a resume may repeat steps
      pts = [(s, v) for s, v in pts if v is not None]
      if not pts:
        continue
      ax.plot(*zip(*pts), label=split, marker='.' if split != 'train' else None)
      at = dict(pts).get(chosen_step) if split != 'train' else None
      if at is not None:
        ax.plot([chosen_step], [at], marker='*', markersize=14, color='black', linestyle='none',
                label=f'chosen: step {chosen_step}')
    selected = selection and f'{splits[-1]}/{name}' == selection
    ax.set_title(f'{name} (selects the checkpoint)' if selected else name, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  return _save(fig, workdir, 'curves.png')


def human_count(n):
  """1234 → '1.2k', 5600000 → '5.6M': counts short enough to sit in a matrix cell."""
  n = int(n)
  for unit, size in (('M', 1e6), ('k', 1e3)):
    if abs(n) >= size * 0.99995:  # 999,950 rounds to 1M, not 1000.0k
      return f'{n / size:.1f}{unit}'.replace('.0' + unit, unit)
  return str(n)


def confusion_figure(matrix, class_names):
  """Row-normalised confusion matrix: each cell the % of its true class (colour and number)
  and its count in k/M; the figure grows with the number of classes."""
  matrix = np.asarray(matrix, np.int64)
  k = len(matrix)
  rows = matrix.sum(1, keepdims=True)
  percent = 100.0 * matrix / np.maximum(rows, 1)
  side = 1.6 + (1.1 if k <= 10 else 0.6) * k
  fig, ax = plt.subplots(figsize=(side + 1.2, side))
  shown = ax.imshow(percent, cmap='Blues', vmin=0, vmax=100)
  for (i, j), p in np.ndenumerate(percent):
    ax.text(j, i, f'{p:.1f}%\n{human_count(matrix[i, j])}', ha='center', va='center',
            fontsize=9 if k <= 10 else 6, color='white' if p > 55 else 'black')
  ax.set_xticks(range(k), class_names, rotation=30, ha='right')
  ax.set_yticks(range(k), [f'{n}\n({human_count(r)})' for n, r in zip(class_names, rows[:, 0])])
  ax.set_xlabel('predicted')
  ax.set_ylabel('true (total)')
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label='% of the true class')
  fig.tight_layout()
  return fig


def confusion(workdir, matrix, class_names, name='confusion_test.png'):
  return _save(confusion_figure(matrix, class_names), workdir, name)


def figure_array(fig, dpi=80):
  """A figure as uint8 [H, W, 3] (TensorBoard images), closed afterwards."""
  fig.set_dpi(dpi)
  fig.canvas.draw()
  array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return array


def legend_handles(class_names):
  colours = export.class_colours(len(class_names))
  return [patches.Patch(facecolor=np.asarray(colours[i]) / 255, edgecolor='black', label=n)
          for i, n in enumerate(class_names) if i]


def segmentation_panels(workdir, panels, name, class_names):
  """Rows of image | ground truth | prediction: class contours (histojax/overlay.py) over the
  untinted image, the image name and the per-image Dice in the titles, one legend."""
  fig, axes = plt.subplots(len(panels), 3, figsize=(13, 3.4 * len(panels) + 0.6),
                           squeeze=False)
  for row, panel in zip(axes, panels):
    image, true, pred = panel['image'], panel['true'], panel['pred']
    k = len(class_names)
    # The panel shows the image at ~330 px wide: contours thick enough to survive that.
    t = max(1, round(image.shape[1] / 200))
    shown = (image, overlay.contours(image, true, k, thickness=t),
             overlay.contours(image, pred, k, thickness=t))
    titles = (panel['name'], 'ground truth', f'prediction: Dice {panel["dice"]:.3f}')
    for ax, img, title in zip(row, shown, titles):
      ax.imshow(img, interpolation='nearest')
      ax.set_title(title, fontsize=10)
      ax.axis('off')
  fig.legend(handles=legend_handles(class_names), loc='lower center', ncol=len(class_names),
             frameon=False, fontsize=10)
  return _save(fig, workdir, name, dpi=80, rect=(0, 0.6 / (3.4 * len(panels) + 0.6), 1, 1))


def attribution_overlay(image_uint8, heatmap, path, title, alpha=0.5, label='attribution',
                        mark_centre=False):
  """Writes the image and the image under a semi-transparent heatmap side by side.

  heatmap is [H, W], or [H, W, C] (summed over channels, as for IG). A signed map uses a
  diverging colormap centred on 0 (red: for the target, blue: against); a non-negative one
  uses a sequential colormap. `label` names the colour bar's quantity; `mark_centre` draws a
  crosshair on the centre pixel of both panels (the nucleus a centred crop is classified by).
  Returns the path.
  """
  image = np.asarray(image_uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  heat = np.asarray(heatmap, np.float64)
  if heat.ndim == 3:
    heat = heat.sum(-1)
  lim = float(np.abs(heat).max()) or 1.0
  # Float noise around 0 should not switch a non-negative map to the diverging colormap.
  if heat.min() < -1e-3 * lim:
    cmap, vmin, vmax = 'bwr', -lim, lim
  else:
    cmap, vmin, vmax = 'inferno', 0.0, lim
  fig, axes = plt.subplots(1, 2, figsize=(7.4, 4.0))
  for ax in axes:
    ax.imshow(image, cmap='gray' if image.ndim == 2 else None)
    ax.axis('off')
    if mark_centre:
      h, w = image.shape[:2]
      ax.plot([(w - 1) / 2], [(h - 1) / 2], marker='+', markersize=16, markeredgewidth=2,
              color='#00FF00')
  shown = axes[1].imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha)
  bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
  bar.set_label(label, fontsize=8)
  axes[0].set_title('input (as the model sees it)', fontsize=8)
  axes[1].set_title('red: for the prediction, blue: against' if cmap == 'bwr' else
                    'brighter: more evidence for the prediction', fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def png_array(path):
  """A written PNG as uint8 [H, W, 3] (for TensorBoard)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))
