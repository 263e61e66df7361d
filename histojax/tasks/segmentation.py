"""Semantic segmentation (glands, nuclei, nucleus types): losses, whole-image evaluation by
sliding window, GlaS object metrics, nucleus detection F1, report panels.

Training sees random crops (data layer augmentation); evaluation always runs on whole images
with `histojax.inference.sliding_window`, one image at a time, so every pixel of every image
is scored exactly once whatever the image sizes.
"""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from histojax import export, inference, models, overlay, plots, sharding
from histojax.data import augment, resample
from histojax.metrics import objects
from histojax.metrics import detection as detection_lib
from histojax.metrics import segmentation as seg_metrics
from histojax.tasks import base


class SegmentationTask(base.Task):
  curve_metrics = ('loss', 'dice')
  helpers = ('predict_image', 'postprocess_labels')

  def __init__(self, config, info):
    super().__init__(config, info)          # num_classes includes background
    self.binary = self.num_classes == 2     # one logit per pixel, sigmoid
    self.mean = jnp.asarray(config.data.mean, jnp.float32)
    self.std = jnp.asarray(config.data.std, jnp.float32)
    self.loss_name = config.loss or ('bce+dice' if self.binary else 'ce+dice')
    self.loss_terms = set(self.loss_name.split('+'))
    self.dice_weight = float(config.dice_weight)  # loss = BCE/CE + dice_weight * soft Dice
    known = {'bce', 'dice'} if self.binary else {'ce', 'dice'}
    if not self.loss_terms <= known:
      raise ValueError(f'Unknown loss {self.loss_name!r} (config key: loss); '
                       f'{"binary" if self.binary else "multi-class"} tasks take '
                       f'{" / ".join(sorted(known))} or a sum like {"+".join(sorted(known))}.')
    # Soft Dice per image, or over the whole global batch (nnU-Net's batch Dice, MONAI
    # batch=True): per image, a class absent from a crop pushes its probabilities to 0
    # everywhere, which can collapse rare classes to background.
    self.dice_over = config.dice_over
    if self.dice_over not in ('image', 'batch'):
      raise ValueError(f"dice_over must be 'image' or 'batch', got {self.dice_over!r} "
                       '(config key: dice_over).')
    weights = tuple(config.class_weights or ())
    if weights and len(weights) != self.num_classes:
      raise ValueError(f'class_weights has {len(weights)} entries; give one per class, '
                       f'background first ({self.num_classes}: {", ".join(self.class_names)}) '
                       '(config key: class_weights).')
    self.class_weights = jnp.asarray(weights, jnp.float32) if weights else None
    params = dict(config.data.augment or {})
    params['crop_size'] = config.data.crop_size
    # Working resolution: images and masks downsampled for training and prediction,
    # probabilities upsampled back, metrics on the original masks (histojax/data/resample.py).
    self.scale = resample.check_scale(config.data.scale)
    self.train_transform = functools.partial(_crop_example, params=params, seed=config.seed,
                                             binary=self.binary, scale=self.scale)
    self.window = tuple(config.inference.window)
    self.overlap = config.inference.overlap
    self.blend = config.inference.blend
    self.window_batch = config.inference.window_batch
    self.tta = config.inference.tta
    self.ignore_empty = config.ignore_empty
    self.object_metrics = bool(info.get('instance_masks'))
    self.detection = bool(info.get('points'))
    self.detection_radius = config.detection_radius
    self.object_type = 'detection' if self.detection else 'annotation'
    # Post-processing, with candidates chosen on val (select_on_val): GlaS object_min_size
    # (predicted components smaller than it are not objects; object metrics only) and nucleus
    # detection_split (0 = blob centroids; d > 0 = distance-map maxima >= d px apart, which
    # splits touching nuclei; binary masks only).
    self.postprocess = {}
    if self.object_metrics:
      self.postprocess['object_min_size'] = int(config.object_min_size)
    if self.detection and self.binary:
      self.postprocess['detection_split'] = int(config.detection_split)
    self.candidates = {
        'object_min_size': sorted({int(config.object_min_size),
                                   *map(int, config.object_min_size_candidates or ())}),
        'detection_split': sorted({int(config.detection_split),
                                   *map(int, config.detection_split_candidates or ())})}
    self.panels = config.report_panels
    self._predict_cache = {}

  @property
  def out_channels(self):
    return 1 if self.binary else self.num_classes

  # ------------------------------------------------------------------------ training
  def inputs(self, batch, rng, train):
    del rng, train
    return (batch['image'].astype(jnp.float32) / 255.0 - self.mean) / self.std

  def loss(self, logits, batch):
    """Per-example loss [B]: BCE / CE, soft Dice, or their sum (config.loss)."""
    mask = batch['mask']
    valid = (mask >= 0).astype(jnp.float32)  # IGNORE (-1) pixels count nowhere
    pixel_mean = lambda x: jnp.sum(x * valid, axis=(1, 2)) / jnp.maximum(
        jnp.sum(valid, axis=(1, 2)), 1.0)
    terms = []
    if self.binary:
      target = (mask > 0).astype(jnp.float32)
      logit = logits[..., 0]
      prob = jax.nn.sigmoid(logit)
      if 'bce' in self.loss_terms:
        pixel = optax.sigmoid_binary_cross_entropy(logit, target)
        if self.class_weights is not None:
          pixel = pixel * jnp.where(target > 0, self.class_weights[1], self.class_weights[0])
        terms.append(pixel_mean(pixel))
      probs, onehot = prob[..., None], target[..., None]
    else:
      onehot = jax.nn.one_hot(mask, self.num_classes)  # all zeros where IGNORE
      probs = jax.nn.softmax(logits)
      if 'ce' in self.loss_terms:
        pixel = optax.softmax_cross_entropy(logits, onehot)
        if self.class_weights is not None:
          pixel = pixel * self.class_weights[jnp.maximum(mask, 0)]
        terms.append(pixel_mean(pixel))
      probs, onehot = probs[..., 1:], onehot[..., 1:]  # Dice over foreground classes
    if 'dice' in self.loss_terms:
      probs = probs * valid[..., None]
      axes = (1, 2) if self.dice_over == 'image' else (0, 1, 2)
      inter = jnp.sum(probs * onehot, axis=axes)
      denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
      dice = 1.0 - jnp.mean((2 * inter + 1.0) / (denom + 1.0), axis=-1)
      # batch: the same term per row
      terms.append(self.dice_weight * jnp.broadcast_to(dice, mask.shape[:1]))
    return sum(terms)

  def _labels(self, logits):
    return (logits[..., 0] > 0).astype(jnp.int32) if self.binary else jnp.argmax(logits, -1)

  def train_metrics(self, logits, batch, loss):
    pred, true = self._labels(logits), batch['mask']
    valid = true >= 0
    fg_pred, fg_true = (pred > 0) & valid, true > 0
    inter = jnp.sum(fg_pred & fg_true)
    return {'loss': jnp.mean(loss),
            'pixel_accuracy': jnp.sum((pred == true) & valid) / jnp.maximum(jnp.sum(valid), 1),
            'dice': 2 * inter / jnp.maximum(jnp.sum(fg_pred) + jnp.sum(fg_true), 1)}

  # ---------------------------------------------------------------------- evaluation
  def _predictor(self, model, mesh):
    """Jitted window-batch → per-class probabilities [N, h, w, C]; compiled once per run."""
    key = (id(model), id(mesh))
    if key not in self._predict_cache:
      def predict(state, windows):
        logits = models.apply(model, state, self.inputs({'image': windows}, None, False))
        if self.binary:
          p = jax.nn.sigmoid(logits)
          return jnp.concatenate([1 - p, p], axis=-1)
        return jax.nn.softmax(logits)
      self._predict_cache[key] = jax.jit(predict)
    return self._predict_cache[key]

  def region_predictor(self, model, variables, mesh):
    predict = self._predictor(model, mesh)
    one_view = functools.partial(
        inference.sliding_window,
        lambda w: predict(variables, sharding.to_global(mesh, {'w': w})['w']),
        window=self.window, overlap=self.overlap, window_batch=self.window_batch,
        blend=self.blend)

    def region(image, keep=None):
      return inference.with_tta(one_view, np.asarray(image), self.tta, keep=keep)
    return region

  def predict_image(self, model, state, mesh, image):
    """Whole image → (probabilities [H, W, C], label map [H, W])."""
    image = np.asarray(image)
    probs = self.region_predictor(model, state, mesh)(resample.image(image, self.scale))
    probs = resample.probabilities(probs, image.shape[:2])
    return probs, np.argmax(probs, -1).astype(np.int32)

  def evaluate(self, model, state, source, *, mesh, postprocess=None, process_index=0,
               process_count=1, progress=None):
    """Scores every image of `source` once. With several hosts every host scores all images
    (replicated params, local windows), so results agree without a gather."""
    del process_index
    names = getattr(source, 'names', None) or [f'image {i}' for i in range(len(source))]
    settings = dict(self.postprocess if postprocess is None else postprocess)
    if process_count > 1:  # each host scores every image on its own devices
      mesh = jax.make_mesh((jax.local_device_count(),), ('data',), devices=jax.local_devices(),
                           axis_types=(jax.sharding.AxisType.Auto,))
      state = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), state),
                             sharding.replicated(mesh))
    pixels, glas, detection = self._accumulators()
    # Kept for select_on_val, so that only the final report scores every candidate.
    choose = {k: len(self.candidates[k]) > 1 and k in settings for k in self.candidates}
    object_pairs = [] if choose['object_min_size'] else None
    split_pairs = [] if choose['detection_split'] else None
    panels = []
    for i in range(len(source)):
      example = source[i]
      _, pred = self.predict_image(model, state, mesh, example['image'])
      gt = np.asarray(example['mask'])
      true = (gt > 0).astype(np.int32) if self.binary else gt
      pixels.update(seg_metrics.pixel_stats(pred[None], true[None], None, self.num_classes))
      if glas is not None:
        glas.update(objects.label_objects(pred > 0, min_size=settings['object_min_size']), gt)
        if object_pairs is not None:
          object_pairs.append((pred > 0, gt.astype(np.min_scalar_type(gt.max(initial=0)))))
      if detection is not None:
        points = np.asarray(example['points'])[:, ::-1]  # (x, y) → (row, col)
        labels = np.asarray(example['point_labels']) + 1
        if self.binary:
          detection.update(detection_lib.detection_f1(
              detection_lib.nucleus_centres(pred > 0, settings['detection_split']), points,
              self.detection_radius))
          if split_pairs is not None:
            split_pairs.append((pred > 0, points))
        else:
          # Untyped nuclei (label 0) are ignored: a blob on one is neither TP nor FP.
          detection.update(detection_lib.typed_detection(pred, points, labels, self.num_classes,
                                                         self.detection_radius))
      if len(panels) < self.panels:
        panels.append({'image': np.asarray(example['image']), 'true': true, 'pred': pred,
                       'name': names[i], 'dice': overlay.dice(pred, true, self.num_classes)})
      if progress is not None:
        progress(i + 1, len(source))
    details = {'pixels': pixels, 'glas': glas, 'object_pairs': object_pairs,
               'detection': detection, 'split_pairs': split_pairs, 'panels': panels}
    return base.EvalResult(self._scalars(details), details, self._images(panels), settings)

  def _accumulators(self):
    """Empty (pixel, GlaS object, detection) metric accumulators; None where not scored."""
    return (seg_metrics.SegmentationMetrics(self.num_classes, self.class_names,
                                            ignore_empty=self.ignore_empty),
            objects.GlaSMetrics() if self.object_metrics else None,
            detection_lib.DetectionMetrics() if self.detection else None)

  def metric_names(self):
    pixels, glas, detection = self._accumulators()  # the scalars of an evaluation of nothing
    with np.errstate(all='ignore'):
      return tuple(self._scalars({'pixels': pixels, 'glas': glas, 'detection': detection}))

  def _scalars(self, details):
    pixels = details['pixels']
    computed = pixels.compute()
    out = pixels.scalars(computed)
    out['dice'] = out['mean_dice']  # the headline: pooled foreground Dice (val/dice)
    out['count'] = computed['n_images']
    if details['glas'] is not None:
      g = details['glas'].compute()
      out.update({f'object_{k}': g[k] for k in ('f1', 'precision', 'recall')})
      out['object_dice'], out['object_hausdorff'] = g['object_dice'], g['object_hausdorff']
    if details['detection'] is not None:
      d = details['detection'].compute()
      out.update({f'detection_{k}': d[k] for k in ('precision', 'recall', 'f1')})
      if not self.binary:  # per nucleus type; NaN before any image is scored
        class_f1 = d.get('class_f1', np.full(self.num_classes - 1, np.nan))
        for c, f1 in enumerate(class_f1):
          out[f'detection_f1_{self.class_names[c + 1]}'] = float(f1)
    return {k: float(v) for k, v in out.items()}

  def _images(self, panels, n=2):
    """TensorBoard: ground truth | prediction overlays (histojax/overlay.py) of the first
    images, named, with the per-image Dice."""
    out = {}
    for i, p in enumerate(panels[:n]):
      truth = overlay.figure(p['image'], p['true'], self.class_names,
                             title=f'{p["name"]}: ground truth')
      pred = overlay.figure(p['image'], p['pred'], self.class_names,
                            title=f'prediction: Dice {p["dice"]:.3f}')
      gap = np.full((truth.shape[0], 8, 3), 255, np.uint8)
      out[f'val_prediction/{i}'] = np.concatenate([truth, gap, pred], axis=1)
    return out

  def select_on_val(self, val):
    """Chooses the post-processing among its candidates on val, for the test parts scored
    after it: GlaS object_min_size by val object F1, nucleus detection_split by val detection
    F1 (ties: the smaller). Returns the val result rescored with the choice."""
    details, settings, notes = dict(val.details), dict(val.postprocess), []
    if details.get('object_pairs'):
      by_size = {}
      for min_size in self.candidates['object_min_size']:
        by_size[min_size] = objects.GlaSMetrics()
        for pred, gt in details['object_pairs']:
          by_size[min_size].update(objects.label_objects(pred, min_size=min_size), gt)
      f1 = {m: g.compute()['f1'] for m, g in by_size.items()}
      chosen = settings['object_min_size'] = max(f1, key=lambda m: (f1[m], -m))
      details['glas'] = by_size[chosen]
      notes.append(
          f'Object post-processing chosen on val: predicted components < {chosen} px dropped '
          'before the object metrics (val object F1 by candidate: '
          f'{", ".join(f"{m}: {v:.3f}" for m, v in f1.items())}). Pixel metrics use the raw '
          'mask.')
    if details.get('split_pairs'):
      by_split = {}
      for d in self.candidates['detection_split']:
        by_split[d] = detection_lib.DetectionMetrics()
        for binary, points in details['split_pairs']:
          by_split[d].update(detection_lib.detection_f1(
              detection_lib.nucleus_centres(binary, d), points, self.detection_radius))
      f1 = {d: m.compute()['f1'] for d, m in by_split.items()}
      chosen = settings['detection_split'] = max(f1, key=lambda d: (f1[d], -d))
      details['detection'] = by_split[chosen]
      notes.append(
          f'Nucleus centres chosen on val: detection_split={chosen} (val detection F1 by '
          f'candidate: {", ".join(f"{d}: {v:.3f}" for d, v in f1.items())}; 0 = blob '
          'centroids, d = distance-map maxima at least d px apart).')
    return base.EvalResult(self._scalars(details), details, val.images, settings, notes)

  def postprocess_labels(self, labels, settings):
    """--mode=predict: the post-processing chosen on val (GlaS: drop small components)."""
    min_size = settings.get('object_min_size', 0) if self.object_metrics else 0
    if not min_size:
      return labels
    return np.where(objects.label_objects(labels > 0, min_size=min_size) > 0, labels, 0)

  def pool_tests(self, results):
    """Pixel metrics pooled over several test parts (GlaS testA + testB)."""
    pixels = seg_metrics.SegmentationMetrics(self.num_classes, self.class_names,
                                             ignore_empty=self.ignore_empty)
    for result in results:
      pixels.merge(result.details['pixels'])
    details = {'pixels': pixels, 'glas': None, 'detection': None, 'panels': []}
    return base.EvalResult(self._scalars(details), details, {}, results[0].postprocess)

  # ------------------------------------------------------------------------- predict
  def predict(self, model, variables, mesh, inputs, output_dir, postprocess, options):
    """Per image, any size (sliding window, the run's TTA, the post-processing chosen on val):
    DIR/<stem>_mask.png (palette PNG: pixel value = class index), _overlay.png, .geojson
    (QuPath objects: glands as annotations, nuclei as detections), nuclei _centroids.csv,
    with --save_probs _probs.npy; DIR/classes.json names the classes and colours."""
    export.classes_json(self.class_names, pathlib.Path(output_dir) / 'classes.json')
    for _, stem, image in inputs:
      probs, labels = self.predict_image(model, variables, mesh, image)
      labels = self.postprocess_labels(labels, postprocess)
      write_prediction(output_dir, stem, image, probs, labels, self.class_names,
                       object_type=self.object_type,
                       centroids=self.detection, **options)

  # -------------------------------------------------------------------------- report
  def report_sections(self, workdir, results, info):
    settings = next(iter(results.values())).postprocess
    notes = results['val'].notes if 'val' in results else []
    tta = ('' if self.tta == 'none' else
           f'; test-time augmentation "{self.tta}": probabilities averaged over the views')
    empty_rule = ('skipped' if self.ignore_empty else
                  'scored 1 if the prediction is empty too, else 0')
    lines = ['## Metric definitions', '',
             '- `dice`, `iou` (pooled): TP/FP/FN summed over all pixels of all images of the '
             'part, then 2TP/(2TP+FP+FN) per class, averaged over foreground classes.',
             '- `*_image`: per image, then averaged over images; images whose ground truth '
             f'lacks a class are {empty_rule} for that class (MONAI ignore_empty).',
             '- Whole images are predicted by sliding window '
             f'({self.window[0]}x{self.window[1]}, overlap {self.overlap}, {self.blend} blending'
             f'{tta}).']
    if self.scale != 1:
      lines.append(f'- Working resolution {self.scale:g}x: images downsampled (antialiased '
                   'bilinear) for training and prediction, probabilities upsampled back '
                   '(bilinear); every metric is scored on the original full-resolution masks.')
    if self.object_metrics:
      lines += ['- `object_f1`, `object_dice`, `object_hausdorff`: GlaS challenge object-level '
                'metrics (area-weighted, pooled over the part). Predicted objects are connected '
                'components. Ground-truth objects are the instance labels of the masks, or the '
                'connected components of binary masks (the dataset notes above say which); then '
                'touching glands merge and the numbers are not directly comparable with '
                'published instance-level ones.']
    if self.detection:
      split = settings.get('detection_split', 0)
      centres = ('predicted blob centroids' if not split else
                 f'predicted nucleus centres (distance-map maxima >= {split} px apart)')
      lines += [f'- `detection_*`: {centres} matched one-to-one to annotated nucleus centres '
                f'within {self.detection_radius} px.']
    lines += [f'- {note}' for note in notes]
    lines.append('')
    for part, result in results.items():
      details = result.details
      if part == 'val' or not details['panels']:
        continue
      png = plots.segmentation_panels(workdir, details['panels'], f'panels_{part}.png',
                                      self.class_names)
      cm = details['pixels'].compute()['confusion']
      cm_png = plots.confusion(workdir, cm, self.class_names, f'confusion_{part}.png')
      dice = ', '.join(f'{p["name"]} {p["dice"]:.3f}' for p in details['panels'])
      lines += [f'## {part}', '', f'![panels]({png.relative_to(workdir)})', '',
                f'Dice of each image shown (its foreground classes present in its truth or '
                f'prediction, averaged; 1 when both are empty): {dice}.', '',
                f'![confusion]({cm_png.relative_to(workdir)})', '',
                'Pixel confusion matrix (rows: true, columns: predicted):', '', '```',
                np.array2string(cm, max_line_width=200), '```', '']
    return lines


def write_prediction(output_dir, stem, image, probs, labels, class_names, *, object_type,
                     centroids, save_probs=False, microns_per_pixel=None):
  """One image's predict outputs (the files are listed in Task.predict above)."""
  out = pathlib.Path(output_dir)
  export.save_label_png(labels, out / f'{stem}_mask.png', len(class_names))
  Image.fromarray(overlay.figure(image, labels, class_names, title=f'{stem}: prediction')
                  ).save(out / f'{stem}_overlay.png')
  export.write_geojson(export.features(labels, class_names, object_type=object_type,
                                       probs=probs, microns_per_pixel=microns_per_pixel),
                       out / f'{stem}.geojson')
  if centroids:
    export.centroids_csv(labels, class_names, out / f'{stem}_centroids.csv', probs=probs,
                         microns_per_pixel=microns_per_pixel)
  if save_probs:
    np.save(out / f'{stem}_probs.npy', probs.astype(np.float16))


def _crop_example(example, *, epoch, index, params, seed, binary, scale=1.0):
  image = resample.image(np.asarray(example['image']), scale)
  mask = resample.mask(np.asarray(example['mask']), scale)
  image, mask = augment.augment(image, mask, params, seed=seed, epoch=epoch, index=index)
  mask = (mask > 0) if binary else mask
  return {'image': image, 'mask': mask.astype(np.int32)}

