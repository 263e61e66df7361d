"""Image classification: softmax cross-entropy, accuracy, per-class counts; tiles of whole
images are also scored per source image."""
import csv
import functools
import logging
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics

from histojax import models, plots, sharding
from histojax.data import augment, device_augment, pipeline
from histojax.metrics import classification as cls_metrics
from histojax.tasks import base


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Summed [true, predicted] counts over masked examples."""
  matrix: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, logits, labels, mask, **_):
    k = logits.shape[-1]
    onehot_true = jax.nn.one_hot(labels, k) * mask[:, None]
    onehot_pred = jax.nn.one_hot(jnp.argmax(logits, -1), k)
    return cls(matrix=(onehot_true.T @ onehot_pred).astype(jnp.int32))

  def merge(self, other):
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self):
    return self.matrix


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy
  confusion: ConfusionMatrix


def image_votes(num_images, num_classes):
  """A metric summing, per source image, the class probabilities of its tiles and their
  one-hot labels ([num_images, C] each, on device, exact under any batching): the image-level
  prediction is the class of the highest mean tile probability."""

  @flax.struct.dataclass
  class ImageVotes(clu_metrics.Metric):
    probs: jnp.ndarray
    labels: jnp.ndarray

    @classmethod
    def from_model_output(cls, *, logits, labels, mask, image_id, **_):
      segment = lambda v: jax.ops.segment_sum(v * mask[:, None], image_id,
                                              num_segments=num_images)
      return cls(probs=segment(jax.nn.softmax(logits)),
                 labels=segment(jax.nn.one_hot(labels, num_classes)))

    def merge(self, other):
      return type(self)(probs=self.probs + other.probs, labels=self.labels + other.labels)

    def compute(self):
      return {'probs': self.probs, 'labels': self.labels}

  return ImageVotes


def image_confusion(votes):
  """[true, predicted] counts over the images with at least one tile in the split."""
  probs, labels = np.asarray(votes['probs']), np.asarray(votes['labels'])
  present = labels.sum(-1) > 0
  true, pred = labels[present].argmax(-1), probs[present].argmax(-1)
  k = labels.shape[-1]
  return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


class ClassificationTask(base.Task):
  curve_metrics = ('loss', 'accuracy')
  helpers = ('crop', 'eval_output', 'summarize')

  def __init__(self, config, info):
    super().__init__(config, info)
    # Tiles of whole images (info['num_images']): also scored per source image.
    self.num_images = info.get('num_images')
    self.metrics = EvalMetrics
    if self.num_images:
      self.metrics = clu_metrics.Collection.create(
          loss=clu_metrics.Average.from_output('loss'), accuracy=clu_metrics.Accuracy,
          confusion=ConfusionMatrix, image_votes=image_votes(self.num_images, self.num_classes))
    self.mean = jnp.asarray(config.data.mean, jnp.float32)
    self.std = jnp.asarray(config.data.std, jnp.float32)
    self.device_augment = config.data.device_augment
    self.eval_batch_size = config.eval_batch_size
    self.explain_samples = config.explain_samples
    self.explain_indices = tuple(config.explain_indices or ())
    self.seed = config.seed
    self.label_smoothing = float(config.label_smoothing)
    self.center_crop = int(config.data.center_crop or 0)
    host = config.data.augment
    # Host-side joint augmentation (H&E patches), drawn from (seed, epoch, index).
    self.train_transform = (functools.partial(_augment_example, params=dict(host),
                                              seed=config.seed) if host else None)
    self._eval_steps = {}
    # Nucleus-centred crops: the attribution figures mark the centre (the nucleus).
    self.centred_crops = config.dataset in ('crchisto_patches', 'csv_patches')

  def crop(self, images):
    """The centre `data.center_crop`² of [..., H, W, C] images (all of them when 0)."""
    if not self.center_crop:
      return images
    h, w, size = images.shape[-3], images.shape[-2], self.center_crop
    if size > min(h, w):
      raise ValueError(f'data.center_crop={size} is larger than the {h}x{w} inputs '
                       '(config key: data.center_crop).')
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size, :]

  def inputs(self, batch, rng, train):
    """uint8 images → centre crop → normalised float32, augmented on device in training."""
    channels = batch['image'].shape[-1]
    if {self.mean.shape, self.std.shape} - {(1,), (channels,)}:  # else it broadcasts wrongly
      raise ValueError(f'data.mean {tuple(self.mean.tolist())} and data.std '
                       f'{tuple(self.std.tolist())} need one value, or one per input channel '
                       f'({channels}) (config keys: data.mean, data.std).')
    x = self.crop(batch['image']).astype(jnp.float32) / 255.0
    if train and self.device_augment:
      x = device_augment.random_affine(rng, x, **self.device_augment)
    return (x - self.mean) / self.std

  def loss(self, logits, batch):
    """The training loss: cross-entropy against labels smoothed by `label_smoothing`."""
    if not self.label_smoothing:
      return _cross_entropy(logits, batch)
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], logits.shape[-1]),
                                  self.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)

  def train_metrics(self, logits, batch, loss):
    return {'loss': jnp.mean(loss),
            'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def eval_output(self, logits, batch):
    extra = {'image_id': batch['image_id']} if self.num_images else {}
    return self.metrics.single_from_model_output(
        logits=logits, labels=batch['label'], mask=batch['mask'],
        loss=_cross_entropy(logits, batch), **extra)

  def summarize(self, computed):
    """Scalars for metrics.jsonl (plus per-class F1); the confusion matrix for the report."""
    matrix = np.asarray(computed['confusion'])
    metrics = cls_metrics.from_confusion(matrix)
    out = {'loss': float(computed['loss']), **cls_metrics.scalars(metrics)}
    out.update({f'f1_{name}': float(f) for name, f in zip(self.class_names, metrics['f1'])})
    details = {'tiles': matrix, 'images': None}
    if 'image_votes' in computed:
      details['images'] = image_confusion(computed['image_votes'])
      image_metrics = cls_metrics.from_confusion(details['images'])
      out.update({f'image_{k}': v for k, v in cls_metrics.scalars(image_metrics).items()})
    return out, details

  def metric_names(self):
    k = self.num_classes  # the summary of an evaluation of nothing has every key
    nothing = {'confusion': np.zeros((k, k), np.int64), 'loss': np.nan}
    if self.num_images:
      nothing['image_votes'] = {'probs': np.zeros((1, k)), 'labels': np.zeros((1, k))}
    with np.errstate(all='ignore'):
      return tuple(self.summarize(nothing)[0])

  def evaluate(self, model, state, source, *, mesh, postprocess=None, process_index=0,
               process_count=1, progress=None):
    """Batched jitted evaluation; padded examples are masked out, so each counts once."""
    del postprocess  # nothing to post-process
    key = (id(model), id(mesh))
    if key not in self._eval_steps:
      def eval_step(state, batch):
        logits = models.apply(model, state, self.inputs(batch, None, train=False))
        return self.eval_output(logits, batch)
      self._eval_steps[key] = jax.jit(eval_step)
    total, done = None, 0
    for local in pipeline.eval_batches(source, global_batch=self.eval_batch_size,
                                       process_index=process_index,
                                       process_count=process_count):
      out = self._eval_steps[key](state, sharding.to_global(mesh, local))
      total = out if total is None else total.merge(out)
      done += self.eval_batch_size
      if progress is not None:
        progress(min(done, len(source)), len(source))
    scalars, details = self.summarize(total.compute())
    images = {'confusion': plots.figure_array(plots.confusion_figure(details['tiles'],
                                                                     self.class_names))}
    return base.EvalResult(scalars, details, images)

  def report_sections(self, workdir, results, info):
    names = self.class_names
    lines = []
    for part, result in results.items():
      if part == 'val':
        continue
      details = result.details
      confusion = details['tiles']
      metrics = cls_metrics.from_confusion(confusion)
      ok, message = cls_metrics.bias_check(metrics, class_names=names)
      if not ok:
        logging.warning('%s: %s', part, message)
      png = plots.confusion(workdir, confusion, names, f'confusion_{part}.png')
      lines += [f'## {part}', '', f'> {message}', '',
                cls_metrics.markdown_table(metrics, names), '',
                f'![confusion]({png.relative_to(workdir)})', '',
                'Confusion matrix (rows: true, columns: predicted):', '', '```',
                np.array2string(np.asarray(confusion), max_line_width=200), '```', '']
      if details['images'] is not None:
        image_metrics = cls_metrics.from_confusion(details['images'])
        ok, message = cls_metrics.bias_check(image_metrics, class_names=names)
        if not ok:
          logging.warning('%s, per image: %s', part, message)
        image_png = plots.confusion(workdir, details['images'], names,
                                    f'confusion_{part}_images.png')
        lines += [f'### {part}, per source image (mean tile probability)', '',
                  f'> Per image: {message}', '',
                  cls_metrics.markdown_table(image_metrics, names), '',
                  f'![image confusion]({image_png.relative_to(workdir)})', '',
                  'Image confusion matrix (rows: true, columns: predicted):', '', '```',
                  np.array2string(details['images'], max_line_width=200), '```', '']
    return lines

  def explain(self, model, state, source, workdir, part):
    """Occlusion and integrated-gradients overlays for the test examples `explain_indices`, or
    else `explain_samples` random (seeded) ones: plots/explain_<part>_<n>_{occlusion,ig}.png."""
    from histojax import explain  # pylint: disable=g-import-not-at-top
    if self.explain_indices:
      picks = self.explain_indices
      if max(picks) >= len(source) or min(picks) < 0:
        raise ValueError(f'explain_indices {picks} must lie in 0..{len(source) - 1}, the '
                         f'examples of {part} (config key: explain_indices).')
    elif self.explain_samples:
      picks = sorted(np.random.default_rng(self.seed).choice(
          len(source), min(self.explain_samples, len(source)), replace=False))
    else:
      return []
    apply_fn = lambda x: models.apply(model, state, x)
    names = getattr(source, 'names', None)
    lines = [f'## Attribution ({part}: occlusion and integrated gradients)', '',
             'Left: the input the model sees; right: the attribution over it. Red: evidence for '
             'the predicted class, blue: against. '
             + ('The green cross marks the nucleus the crop is centred on.'
                if self.centred_crops else ''), '']
    for n, i in enumerate(picks):
      example = source[int(i)]
      image = np.asarray(example['image'])
      x = np.asarray(self.inputs({'image': jnp.asarray(image[None])}, None, False))[0]
      image = self.crop(image)  # what the model sees
      pred = int(np.argmax(apply_fn(x[None])[0]))
      true = int(example['label'])
      where = names[int(i)] if names else f'{part} example {i}'
      title = f'{where}: predicted {self.class_names[pred]} / true {self.class_names[true]}'
      window = max(2, image.shape[0] // 6)
      heat = explain.occlusion(apply_fn, x, pred, window=window, stride=max(1, window // 2))
      ig = explain.integrated_gradients(apply_fn, x, pred, steps=16)
      rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, -1)
      for name, attribution in (('occlusion', heat), ('ig', ig)):
        png = pathlib.Path(workdir) / 'plots' / f'explain_{part}_{n}_{name}.png'
        plots.attribution_overlay(
            rgb, attribution, png, f'{name}: {title}', mark_centre=self.centred_crops,
            label='logit drop when occluded' if name == 'occlusion' else 'IG (logit units)')
        lines += [f'![{name}]({png.relative_to(workdir)})', '']
    return lines

  def predict_reads(self, info):
    """Inputs must have the training patch size: no silent resizing (it would change the
    magnification); channels are converted (RGB <-> grayscale)."""
    shape = info['input_shape']  # one training example's image (H, W, C)
    return shape[-1], tuple(shape[:2])

  def predict(self, model, variables, mesh, inputs, output_dir, postprocess, options):
    """DIR/predictions.csv: `filename,label` and one probability column per class (the original
    project's Kaggle submission format), written batch by batch (a crash keeps the rows so
    far)."""
    del postprocess, options  # nothing to post-process; one CSV row per patch
    @jax.jit
    def probabilities(variables, images):
      return jax.nn.softmax(models.apply(model, variables, self.inputs({'image': images}, None,
                                                                        train=False)))
    batch = self.eval_batch_size  # fixed, padded: compiled once
    with open(pathlib.Path(output_dir) / 'predictions.csv', 'w', newline='',
              encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['filename', 'label', *[f'p_{n}' for n in self.class_names]])
      for chunk in _chunks(inputs, batch):
        padded = np.zeros((batch, *chunk[0][2].shape), np.uint8)
        padded[:len(chunk)] = [image for _, _, image in chunk]
        p = np.asarray(probabilities(variables, jnp.asarray(padded)))[:len(chunk)]
        for (name, _, _), row in zip(chunk, p):
          writer.writerow([name, self.class_names[int(np.argmax(row))],
                           *[f'{v:.6f}' for v in row]])
        f.flush()


def _chunks(iterator, n):
  chunk = []
  for item in iterator:
    chunk.append(item)
    if len(chunk) == n:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _cross_entropy(logits, batch):
  """Plain cross-entropy: what evaluation reports, whatever the training smoothing."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])


def _augment_example(example, *, epoch, index, params, seed):
  image, _ = augment.augment(np.asarray(example['image']), None, params, seed=seed,
                             epoch=epoch, index=index)
  return {'image': image, 'label': np.int32(example['label'])}
