"""Grid PNGs of examples with mask overlays or label captions, for eyeballing data/augmentation.

  python -m histojax.data.show --config=configs/<name>.py --out=grid.png [--n=16]
"""
import numpy as np

def _as_rgb(image):
  """Any of uint8 / float (normalised or not), HxW / HxWx1 / HxWx3 → float HxWx3 in [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  uint8, image = image.dtype == np.uint8, image[..., :3].astype(np.float32)
  if uint8:
    return image / 255.0
  if image.min() < 0 or image.max() > 1:  # unnormalised floats: 0..255, else their own range
    lo, hi = (0.0, 255.0) if image.min() >= 0 and image.max() <= 255 else (image.min(), image.max())
    image = (image - lo) / max(hi - lo, 1e-6)
  return np.clip(image, 0, 1)


def _overlay(rgb, mask, num_classes):
  """The one overlay style (histojax/overlay.py): class contours over the untinted image."""
  from histojax import overlay  # pylint: disable=g-import-not-at-top
  image = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
  return overlay.contours(image, mask, num_classes, fill=0.15) / 255.0


def _name(label, class_names):
  label = int(label)
  known = class_names is not None and 0 <= label < len(class_names)
  return str(class_names[label]) if known else str(label)


def grid_png(images, masks_or_labels, out_path, ncols=4, class_names=None):
  """Writes a grid of images to `out_path` (PNG).

  masks_or_labels: per image, an HxW label mask (overlaid), a class index or one-hot/probability
  vector (captioned), or None; or None for no annotation at all.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  images = list(images)
  targets = [None] * len(images) if masks_or_labels is None else list(masks_or_labels)
  if len(targets) != len(images):
    raise ValueError(f'{len(images)} images but {len(targets)} masks/labels.')
  ncols = max(1, min(ncols, len(images)))
  nrows = -(-len(images) // ncols)
  fig = Figure(figsize=(3 * ncols, 3.2 * nrows))
  FigureCanvasAgg(fig)
  for i, (image, target) in enumerate(zip(images, targets)):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    rgb, title = _as_rgb(image), None
    target = None if target is None else np.asarray(target)
    if target is not None and target.ndim == 2:
      k = len(class_names) if class_names else int(max(t.max() for t in targets)) + 1
      rgb = _overlay(rgb, target, k)
      present = [v for v in np.unique(target) if v != 0]
      if class_names is None:
        title = f'{len(present)} labels'
      else:
        title = ', '.join(_name(v, class_names) for v in present[:4]) + '…' * (len(present) > 4)
    elif target is not None:
      title = _name(target if target.ndim == 0 else np.argmax(target), class_names)
    ax.imshow(rgb, interpolation='nearest')
    ax.set_axis_off()
    if title:
      ax.set_title(title, fontsize=9)
  if class_names and targets and targets[0] is not None and np.ndim(targets[0]) == 2:
    from histojax import plots  # pylint: disable=g-import-not-at-top
    fig.legend(handles=plots.legend_handles(class_names), loc='lower center',
               ncol=len(class_names), frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (3.2 * nrows), 1, 1))
  else:
    fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  return out_path


def _unpack(examples):
  """sample_examples output (a list of example dicts) → (images, targets)."""
  images = [e['image'] for e in examples]
  key = next((k for k in ('mask', 'label') if k in examples[0]), None)
  return images, None if key is None else [e[key] for e in examples]


def sample_examples(config, n):
  """The first n training examples exactly as the train step sees them (augmented, cropped),
  and the class names."""
  from histojax import tasks  # pylint: disable=g-import-not-at-top
  from histojax.data import datasets, pipeline  # pylint: disable=g-import-not-at-top
  splits = datasets.get_splits(config)
  task = tasks.get_task(config, splits.info)
  examples = pipeline.train_examples(splits.train, seed=config.seed,
                                     transform=task.train_transform, n=n)
  return examples, splits.info.get('class_names')


def main(argv):
  del argv
  from histojax import console  # pylint: disable=g-import-not-at-top
  console.setup_console()
  examples, class_names = sample_examples(_FLAGS.config, _FLAGS.n)
  images, targets = _unpack(examples)
  print(grid_png(images, targets, _FLAGS.out, ncols=_FLAGS.ncols, class_names=class_names))


if __name__ == '__main__':
  # Flags are defined only when run as a script, so importing this module never clashes with
  # a caller's own --config.
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
  flags.DEFINE_string('out', 'grid.png', 'Where to write the PNG.')
  flags.DEFINE_integer('n', 16, 'How many examples.')
  flags.DEFINE_integer('ncols', 4, 'Grid columns.')
  _FLAGS = flags.FLAGS
  flags.mark_flag_as_required('config')
  app.run(main)
