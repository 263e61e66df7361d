"""Every PNG figure of a report: training curves, confusion matrices, segmentation panels,
attribution overlays. Each takes arrays and where to write, and returns the PNG's path."""
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from histojax import writers


def _save(fig, workdir, name, dpi=100):
  fig.tight_layout()
  path = pathlib.Path(workdir) / 'plots' / name
  path.parent.mkdir(exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def curves(workdir, names):
  """One panel per metric name: train and val curves from metrics.jsonl."""
  rows = writers.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
  for ax, name in zip(axes[0], names):
    for split in ('train', 'val'):
      pts = writers.by_step(rows, f'{split}/{name}')  # a resume may repeat steps
      if pts:
        ax.plot(*zip(*pts), label=split, marker='.' if split == 'val' else None)
    ax.set_xlabel('step')
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  return _save(fig, workdir, 'curves.png')


def confusion(workdir, matrix, class_names, name='confusion_test.png'):
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
  return _save(fig, workdir, name)


def segmentation_panels(workdir, panels, name):
  """Rows of image | ground truth | prediction | overlay (green: GT outline, red: prediction)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(panels), 4, figsize=(13, 3.2 * len(panels)), squeeze=False)
  k = max(int(max(t.max(), p.max())) for _, t, p in panels)
  for row, (image, true, pred) in zip(axes, panels):
    overlay = image.astype(np.float32) / 255.0
    for labels, colour in ((true, (0, 1, 0)), (pred, (1, 0, 0))):
      edge = (labels > 0) & ~ndimage.binary_erosion(labels > 0, iterations=2)
      overlay[edge] = colour
    for ax, img, title in zip(row, (image, true, pred, overlay),
                              ('image', 'ground truth', 'prediction', 'overlay')):
      ax.imshow(img, cmap='viridis' if img.ndim == 2 else None, vmin=0,
                vmax=max(k, 1) if img.ndim == 2 else None, interpolation='nearest')
      ax.set_title(title)
      ax.axis('off')
  return _save(fig, workdir, name, dpi=80)


def attribution_overlay(image_uint8, heatmap, path, title, alpha=0.5):
  """Writes the image and the image under a semi-transparent heatmap side by side.

  heatmap is [H, W], or [H, W, C] (summed over channels, as for IG). A signed map uses a
  diverging colormap centred on 0 (red: for the target, blue: against); a non-negative one
  uses a sequential colormap. Returns the path.
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
  fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
  for ax in axes:
    ax.imshow(image, cmap='gray' if image.ndim == 2 else None)
    ax.axis('off')
  shown = axes[1].imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha)
  fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
