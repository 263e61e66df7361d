"""Nucleus detection on host (numpy/scipy): predicted centres against annotated points.

Predicted centres come from a binary mask (`nucleus_centres`): the centroid of each connected
component, or, to split touching nuclei, the maxima of the distance to background. They are
matched one-to-one to annotated points (row, col) within `radius` px by a maximum-cardinality,
minimum-total-distance assignment. Precision, recall and F1 are 0 where their denominator is
0, except that no points and no predictions at all scores 1 for each. Counts are summed over
images before scoring.
"""
import numpy as np
from scipy import ndimage, optimize, spatial

from histojax.metrics.objects import consecutive_labels, label_objects, precision_recall_f1


def blob_centroids(binary_or_label_map, min_size=0):
  """Centroids [N, ndim] (row, col) of the objects of a label map, or of the connected
  components of a binary (bool or 0/1) mask; objects < min_size px dropped."""
  m = np.asarray(binary_or_label_map)
  labels = (label_objects(m, min_size) if m.dtype == bool or m.max(initial=0) <= 1
            else consecutive_labels(m, min_size))
  return _centroids(labels)


def _centroids(labels):
  n = int(labels.max(initial=0))
  flat = labels.ravel()
  count = np.bincount(flat, minlength=n + 1)[1:]
  grid = np.indices(labels.shape).reshape(labels.ndim, -1)
  sums = [np.bincount(flat, weights=axis, minlength=n + 1)[1:] for axis in grid]
  return np.stack(sums, -1).reshape(n, labels.ndim) / np.maximum(count, 1)[:, None]


def nucleus_centres(binary, min_distance=0):
  """Predicted nucleus centres [N, 2] (row, col) of a binary mask.

  min_distance=0: the centroid of each 8-connected component. min_distance=d > 0: touching
  nuclei are split at the local maxima of the Euclidean distance to background within a
  (2d+1)² window (a plateau of equal maxima counts once, at its centroid); a component
  holding no such maximum (a neighbour's is higher) keeps its centroid.
  """
  binary = np.asarray(binary) > 0
  labels = label_objects(binary)
  if not min_distance:
    return _centroids(labels)
  dist = ndimage.distance_transform_edt(binary)
  peaks = binary & (dist == ndimage.maximum_filter(dist, size=2 * int(min_distance) + 1))
  peak_labels, _ = ndimage.label(peaks, np.ones((3, 3), bool))
  without_peak = np.setdiff1d(np.unique(labels[~peaks & binary]), labels[peaks])
  lone = np.where(np.isin(labels, without_peak), labels, 0)
  return np.concatenate([_centroids(peak_labels), _centroids(consecutive_labels(lone))])


def _match(pred, true, radius):
  """Index pairs of a one-to-one matching within radius: most pairs, then least distance."""
  pred = np.asarray(pred, np.float64).reshape(-1, 2)
  true = np.asarray(true, np.float64).reshape(-1, 2)
  if not len(pred) or not len(true):
    return np.zeros(0, int), np.zeros(0, int)
  dist = spatial.distance.cdist(pred, true)
  ok = dist <= radius
  rows, cols = np.flatnonzero(ok.any(1)), np.flatnonzero(ok.any(0))
  if not len(rows):
    return np.zeros(0, int), np.zeros(0, int)
  sub_ok, sub = ok[np.ix_(rows, cols)], dist[np.ix_(rows, cols)]
  # A penalty above any sum of in-radius distances makes the minimum-cost assignment use as
  # few out-of-radius pairs as possible, i.e. match as many points as possible.
  penalty = (radius + 1.0) * (min(sub.shape) + 1)
  r, c = optimize.linear_sum_assignment(np.where(sub_ok, sub, penalty))
  keep = sub_ok[r, c]
  return rows[r[keep]], cols[c[keep]]


def _counts(n_pred, n_true, n_matched):
  return {'tp': int(n_matched), 'fp': int(n_pred - n_matched), 'fn': int(n_true - n_matched)}


def _counts_ignoring(pred, true, ignore, radius):
  """Counts of one matching of pred to all true points; pairs with an ignored point and
  unmatched ignored points count nowhere."""
  _, cols = _match(pred, true, radius)
  ignored = int(ignore[cols].sum())
  return _counts(len(pred) - ignored, int((~ignore).sum()), len(cols) - ignored)


def _with_scores(counts):
  p, r, f = precision_recall_f1(counts['tp'], counts['fp'], counts['fn'])
  return dict(counts, precision=float(p), recall=float(r), f1=float(f))


def detection_f1(pred_points, true_points, radius=6.0):
  """One-to-one matching of predicted to true points (row, col) within radius px."""
  pred = np.asarray(pred_points, np.float64).reshape(-1, 2)
  true = np.asarray(true_points, np.float64).reshape(-1, 2)
  r, _ = _match(pred, true, radius)
  return _with_scores(_counts(len(pred), len(true), len(r)))


def typed_detection(pred_type_map, true_points, true_labels, num_classes, radius=6.0,
                    min_size=0):
  """Overall and per-class detection from a type map (0 = background, types 1..C-1).

  Predicted nuclei are the connected components of (type_map > 0), each typed by the
  majority type of its pixels (ties: lowest type). Per-class counts match class-c
  predictions to class-c points only; the 'class_*' arrays are indexed by type - 1.
  A point of label 0 is a nucleus without a type (ignore, as IGNORE pixels are): a prediction
  matched to it is neither TP nor FP (overall: any prediction; per class: one of that class),
  and missing it is no FN.
  """
  types = np.asarray(pred_type_map).astype(np.int64)
  if types.size and (types.min() < 0 or types.max() >= num_classes):
    raise ValueError(f'type map values must lie in [0, {num_classes})')
  labels = label_objects(types > 0, min_size)
  n = int(labels.max(initial=0))
  votes = np.bincount(labels.ravel() * num_classes + types.ravel(),
                      minlength=(n + 1) * num_classes).reshape(n + 1, num_classes)[1:]
  pred_cls = votes[:, 1:].argmax(1) + 1 if n else np.zeros(0, np.int64)
  pred = _centroids(labels)
  true = np.asarray(true_points, np.float64).reshape(-1, 2)
  true_cls = np.asarray(true_labels).reshape(-1)
  untyped = true_cls == 0
  out = _counts_ignoring(pred, true, untyped, radius)
  per = np.zeros((3, num_classes - 1), np.int64)
  for c in range(1, num_classes):
    candidates = (true_cls == c) | untyped
    cnt = _counts_ignoring(pred[pred_cls == c], true[candidates], untyped[candidates], radius)
    per[:, c - 1] = cnt['tp'], cnt['fp'], cnt['fn']
  out.update(class_tp=per[0], class_fp=per[1], class_fn=per[2])
  return DetectionMetrics.score(out)


class DetectionMetrics:
  """Sums detection counts over images (from detection_f1 or typed_detection), then scores."""

  def __init__(self):
    self.totals, self.n_images = {}, 0

  def update(self, result):
    self.n_images += 1
    for k in ('tp', 'fp', 'fn', 'class_tp', 'class_fp', 'class_fn'):
      if k in result:
        self.totals[k] = self.totals.get(k, 0) + np.asarray(result[k], np.int64)

  def compute(self):
    out = self.score(dict(_counts(0, 0, 0), **self.totals))
    out['n_images'] = self.n_images
    return out

  @staticmethod
  def score(counts):
    out = _with_scores({k: int(counts[k]) for k in ('tp', 'fp', 'fn')})
    if 'class_tp' in counts:
      tp, fp, fn = (np.asarray(counts[f'class_{k}']) for k in ('tp', 'fp', 'fn'))
      p, r, f = precision_recall_f1(tp, fp, fn)
      out.update(class_tp=tp, class_fp=fp, class_fn=fn, class_precision=p, class_recall=r,
                 class_f1=f)
    return out
