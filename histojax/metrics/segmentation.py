"""Exact pixel-level segmentation metrics over a whole evaluation split.

On device, `pixel_stats` reduces a batch of label maps to sufficient statistics: per-image,
per-class TP/FP/FN pixel counts and the [true, predicted] pixel confusion matrix. On host,
`SegmentationMetrics` sums them over the split, so the result does not depend on batch size
or on how the split was padded.

Two averages are reported, since papers use both:
- pooled ("dice", "iou"): TP/FP/FN summed over every image of the split first, then
  Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN) per class;
- per-image ("dice_image", "iou_image"): scored per image and class, then averaged over
  images. "mean_dice_image" follows MONAI's reduction="mean": each image's scores are
  averaged over classes first, then over images.
"mean_dice"/"mean_iou" average the pooled per-class scores over the non-background classes
(class 0 is background) unless include_background.

Empty ground truth (MONAI's DiceMetric policy). Where class c is absent from an image's
ground truth:
- ignore_empty=True: the image is skipped for that class: its score is NaN, left out of the
  per-image means and of not_nans (the number of images that did score the class);
- ignore_empty=False: it scores empty_score (1.0) if the prediction has no pixel of c either,
  else 0.0.
The same rule applies to a pooled class that never occurs in the split's ground truth. A
class or mean with nothing to average is NaN. True labels outside [0, num_classes) (an ignore
index) and pixels or images with mask 0 (padding) count nowhere; a padded image is dropped
entirely, so it cannot score empty_score.
"""
import jax.numpy as jnp
import numpy as np

from histojax.metrics import divide


def pixel_stats(pred_labels, true_labels, mask, num_classes):
  """Per-image per-class TP/FP/FN [B, C] and the pixel confusion matrix [C, C] (jit-friendly).

  pred_labels, true_labels: integer [B, ...spatial]. mask: 0/1 per pixel (same shape) or per
  image [B]; None means all valid. Pixels whose true or predicted label is outside
  [0, num_classes) are left out. Returns int32 arrays 'tp', 'fp', 'fn', 'confusion' (rows
  true, columns predicted) and 'image_mask' [B] (1 where the image has a valid pixel).
  """
  pred = jnp.asarray(pred_labels)
  true = jnp.asarray(true_labels)
  b = true.shape[0]
  pred = pred.reshape(b, -1)
  true = true.reshape(b, -1)
  if mask is None:
    valid = jnp.ones(true.shape, bool)
  else:
    mask = jnp.asarray(mask)
    valid = jnp.broadcast_to(mask.reshape(b, -1), true.shape) > 0
  # Ignore-index pixels would otherwise show up as false positives of the predicted class.
  valid &= (true >= 0) & (true < num_classes) & (pred >= 0) & (pred < num_classes)
  # One scatter-add into per-image [true, pred] bins: exact int32 counts, and no [B, P, C, C]
  # one-hot intermediate (which XLA materialises: ~150 MB for 16 x 256² px at C = 6).
  c2 = num_classes * num_classes
  cell = true * num_classes + pred + jnp.arange(b)[:, None] * c2
  cell = jnp.where(valid, cell, b * c2)  # invalid pixels land in a dropped overflow bin
  per_image = jnp.bincount(cell.ravel(), length=b * c2 + 1)[:-1]
  per_image = per_image.reshape(b, num_classes, num_classes).astype(jnp.int32)
  tp = jnp.diagonal(per_image, axis1=1, axis2=2)
  return {'tp': tp, 'fp': per_image.sum(1) - tp, 'fn': per_image.sum(2) - tp,
          'confusion': per_image.sum(0),
          'image_mask': jnp.any(valid, axis=1).astype(jnp.int32)}


def _nanmean(x, axis=None):
  """Mean over non-NaN entries; NaN (without a warning) where there are none."""
  x = np.asarray(x, np.float64)
  count = np.sum(~np.isnan(x), axis=axis)
  return divide(np.nansum(x, axis=axis), count, empty=np.nan)


class SegmentationMetrics:
  """Host-side accumulator of `pixel_stats` outputs over an evaluation split."""

  def __init__(self, num_classes, class_names=None, ignore_empty=True, empty_score=1.0,
               include_background=False):
    self.num_classes = num_classes
    self.class_names = list(class_names or [str(c) for c in range(num_classes)])
    if len(self.class_names) != num_classes:
      raise ValueError(f'{len(self.class_names)} class names for {num_classes} classes')
    self.ignore_empty = ignore_empty
    self.empty_score = float(empty_score)
    self.include_background = include_background
    self.reset()

  def reset(self):
    self._tp, self._fp, self._fn = [], [], []
    self._confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, stats):
    """Adds one batch of `pixel_stats` (device or numpy arrays)."""
    keep = np.asarray(stats['image_mask']) > 0
    for name, rows in (('tp', self._tp), ('fp', self._fp), ('fn', self._fn)):
      rows.append(np.asarray(stats[name], np.int64)[keep])
    self._confusion += np.asarray(stats['confusion'], np.int64)

  def merge(self, other):
    """Adds another accumulator's images (e.g. pooling GlaS testA and testB)."""
    self._tp += other._tp  # pylint: disable=protected-access
    self._fp += other._fp  # pylint: disable=protected-access
    self._fn += other._fn  # pylint: disable=protected-access
    self._confusion += other._confusion  # pylint: disable=protected-access
    return self

  def _scores(self, tp, fp, fn):
    """Dice and IoU with the empty-ground-truth policy; works per image or pooled."""
    dice = divide(2 * tp, 2 * tp + fp + fn, empty=np.nan)
    iou = divide(tp, tp + fp + fn, empty=np.nan)
    gt_empty = (tp + fn) == 0
    if self.ignore_empty:
      fill = np.full(gt_empty.shape, np.nan)
    else:
      fill = np.where(fp == 0, self.empty_score, 0.0)
    return np.where(gt_empty, fill, dice), np.where(gt_empty, fill, iou)

  def compute(self):
    """Split-level metrics; per-class entries are float64 arrays of length num_classes."""
    c = self.num_classes
    cat = lambda rows: np.concatenate(rows) if rows else np.zeros((0, c), np.int64)
    tp, fp, fn = cat(self._tp), cat(self._fp), cat(self._fn)
    first = 0 if self.include_background else 1
    dice, iou = self._scores(tp.sum(0), fp.sum(0), fn.sum(0))
    dice_img, iou_img = self._scores(tp, fp, fn)  # [N, C]
    total = int(self._confusion.sum())
    return {
        'n_images': int(tp.shape[0]),
        'n_pixels': total,
        'pixel_accuracy': float(divide(np.trace(self._confusion), total, empty=np.nan)),
        'confusion': self._confusion.copy(),
        'dice': dice,
        'iou': iou,
        'mean_dice': float(_nanmean(dice[first:])),
        'mean_iou': float(_nanmean(iou[first:])),
        'dice_image': _nanmean(dice_img, axis=0),
        'iou_image': _nanmean(iou_img, axis=0),
        'mean_dice_image': float(_nanmean(_nanmean(dice_img[:, first:], axis=1))),
        'mean_iou_image': float(_nanmean(_nanmean(iou_img[:, first:], axis=1))),
        'not_nans': np.sum(~np.isnan(dice_img), axis=0),
        'tp': tp.sum(0), 'fp': fp.sum(0), 'fn': fn.sum(0),
    }

  def scalars(self, computed):
    """Flat float dict for metrics.jsonl: means plus per-class entries named by class."""
    out = {k: computed[k] for k in ('pixel_accuracy', 'mean_dice', 'mean_iou',
                                    'mean_dice_image', 'mean_iou_image')}
    first = 0 if self.include_background else 1
    for c in range(first, self.num_classes):
      name = self.class_names[c]
      out[f'dice_{name}'] = float(computed['dice'][c])
      out[f'iou_{name}'] = float(computed['iou'][c])
      out[f'dice_image_{name}'] = float(computed['dice_image'][c])
      # ignore_empty: images without class c in the ground truth, left out of its per-image
      # mean (the "skip and count" policy); 0 when they are scored instead.
      out[f'empty_skipped_{name}'] = float(computed['n_images'] - computed['not_nans'][c])
    return out
