"""GlaS gland segmentation object-level metrics on host (numpy/scipy).

Nucleus detection (points) is in `histojax/metrics/detection.py`.

GlaS (Sirinukunwattana et al. 2017, official MATLAB evaluation_v6), per test part. Objects
are the nonzero labels of instance maps; a bool or 0/1 map is a binary mask, split into
8-connected components (`label_objects`, as MATLAB's bwlabel).
- Object F1: segmented object S_j is matched to the GT object G_i it overlaps most (ties: the
  lowest label, as MATLAB's mode); it is a TP if |S_j ∩ G_i| >= 0.5 |G_i|, else a FP. A GT
  object counts at most one TP (only two objects of exactly 50% each could both qualify; the
  second is a FP), so FN = GT objects without a TP. Pooled: TP/FP/FN summed over the part.
  (The paper says "at least 50%"; some ports of the MATLAB code test > 0.5.)
- Object Dice: ½ [Σ_i ω_i Dice(G_i, S*(G_i)) + Σ_j ω̃_j Dice(G̃*(S_j), S_j)],
  ω_i = |G_i| / Σ|G|, ω̃_j = |S_j| / Σ|S|, the partner being the object of maximal overlap
  (Dice 0 if none).
- Object Hausdorff: the same construction with the Hausdorff distance between the objects'
  full pixel sets (exact: every pixel of one object against the other's boundary pixels in
  a KD-tree); an object that overlaps nothing is paired with the object nearest by
  Hausdorff distance (as the official code does; found by branch and bound).
Pooled metrics normalise the weights over all objects of all images of the part, as in the
challenge; per-image values and their means are returned too.

Worst case for missing objects (do not reward finding fewer structures, cf. MONAI #9095):
where one side of an image has no objects at all, each object on the other side scores
Dice 0 and Hausdorff = the image diagonal hypot(H, W) (more than any in-image distance), and
the empty side's own term is Dice 0 / the diagonal (pooled: the part's largest diagonal, if
that side is empty in every image). An image with no objects on either side is perfect:
F1 = Dice = 1, Hausdorff 0 (official F1score and ObjectDice do the same).
"""
import numpy as np
from scipy import ndimage, spatial

from histojax.metrics import divide


def label_objects(binary, min_size=0, connectivity=None):
  """Connected components of (binary > 0) as int32 labels 1..N; objects < min_size px dropped.

  connectivity: 1 for 4-connected, None (default) for full (8-connected in 2-D).
  """
  binary = np.asarray(binary) > 0
  rank = binary.ndim if connectivity is None else connectivity
  labels, _ = ndimage.label(binary, ndimage.generate_binary_structure(binary.ndim, rank))
  return consecutive_labels(labels, min_size)


def consecutive_labels(labels, min_size=0):
  """Relabels an instance map to 1..N in order of the original labels (0 stays background)."""
  labels = np.asarray(labels)
  if not labels.size:
    return labels.astype(np.int32)
  if labels.min() < 0:
    raise ValueError('instance labels must be non-negative')
  if labels.max() <= 4 * labels.size:
    # bincount over label values is much faster than np.unique's sort on image-sized maps.
    sizes = np.bincount(labels.ravel())
    values, index = None, labels
  else:
    values, index = np.unique(labels, return_inverse=True)
    sizes = np.bincount(index.ravel(), minlength=len(values))
    index = index.reshape(labels.shape)
  keep = (sizes > 0) & (sizes >= min_size)
  keep[0] = values is not None and values[0] != 0
  remap = np.zeros(len(sizes), np.int32)
  remap[keep] = np.arange(1, keep.sum() + 1)
  return remap[index]


def precision_recall_f1(tp, fp, fn):
  """Precision, recall, F1 (0 on a zero denominator; 1 when tp = fp = fn = 0)."""
  tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
  vacuous = (tp + fp + fn) == 0
  return tuple(np.where(vacuous, 1.0, v) for v in (
      divide(tp, tp + fp), divide(tp, tp + fn), divide(2 * tp, 2 * tp + fp + fn)))


class _Objects:
  """Pixel coordinates, bounding boxes and boundary KD-trees of one instance map's objects."""

  def __init__(self, labels):
    self.labels = labels
    self.n = int(labels.max(initial=0))
    self.area = np.bincount(labels.ravel(), minlength=self.n + 1)[1:]
    self.slices = ndimage.find_objects(labels, self.n)
    self.lo = np.array([[s.start for s in sl] for sl in self.slices], int).reshape(
        self.n, labels.ndim)
    self.hi = np.array([[s.stop - 1 for s in sl] for sl in self.slices], int).reshape(
        self.n, labels.ndim)
    self._coords, self._trees = {}, {}

  def coords(self, k):
    if k not in self._coords:
      sl = self.slices[k]
      self._coords[k] = np.argwhere(self.labels[sl] == k + 1) + self.lo[k]
    return self._coords[k]

  def tree(self, k):
    """KD-tree of the object's boundary pixels: the nearest object pixel to any outside
    pixel is always a boundary pixel, so distances to it are exact."""
    if k not in self._trees:
      sl = self.slices[k]
      inside = np.pad(self.labels[sl] == k + 1, 1)
      cross = ndimage.generate_binary_structure(inside.ndim, 1)
      edge = inside & ~ndimage.binary_erosion(inside, cross)
      self._trees[k] = spatial.cKDTree(np.argwhere(edge) - 1 + self.lo[k])
    return self._trees[k]


def _directed(a, j, b, i):
  """max over pixels p of object j of `a` of the distance from p to object i of `b`.

  Every pixel of j is checked, not only its boundary: its farthest pixel can be interior (an
  object inside a hole of the other). Large j (a merged blob): one exact Euclidean distance
  transform of the box around both, which is much cheaper than a KD-tree query per pixel.
  """
  pts = a.coords(j)
  lo, hi = np.minimum(a.lo[j], b.lo[i]), np.maximum(a.hi[j], b.hi[i]) + 1
  if len(pts) * 16 > np.prod(hi - lo):
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    # The box holds all of object i, so its nearest pixel to any box pixel is in the box.
    distance = ndimage.distance_transform_edt(b.labels[box] != i + 1)
    return float(distance[a.labels[box] == j + 1].max())
  outside = pts[b.labels[tuple(pts.T)] != i + 1]
  return float(b.tree(i).query(outside)[0].max()) if len(outside) else 0.0


class _PairHausdorff:
  """Hausdorff distances between objects of S and G, cached by pair."""

  def __init__(self, s, g):
    self.s, self.g, self._cache = s, g, {}

  def __call__(self, j, i):
    if (j, i) not in self._cache:
      self._cache[j, i] = max(_directed(self.s, j, self.g, i), _directed(self.g, i, self.s, j))
    return self._cache[j, i]

  def nearest(self, k, other_side_is_g):
    """Hausdorff distance from object k to the nearest object of the other side.

    Branch and bound: HD(A, B) >= max |extreme coordinate of A - that of B| (the pixel of A
    with the smallest row is at least that far from all of B), so candidates are visited by
    that bound and the search stops once it exceeds the best distance found.
    """
    mine, other = (self.s, self.g) if other_side_is_g else (self.g, self.s)
    bound = np.maximum(np.abs(other.lo - mine.lo[k]), np.abs(other.hi - mine.hi[k])).max(1)
    best = np.inf
    for o in np.argsort(bound, kind='stable'):
      if bound[o] > best:
        break
      best = min(best, self(k, o) if other_side_is_g else self(o, k))
    return best


def _match_partner(overlap):
  """Index of the partner with maximal overlap per row (ties: lowest label), -1 if none."""
  if overlap.shape[1] == 0:
    return np.full(overlap.shape[0], -1)
  best = overlap.argmax(1)
  return np.where(overlap.max(1) > 0, best, -1)


def _glas_image(pred, gt):
  """Sufficient statistics of one image for the GlaS object metrics."""
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'prediction {pred.shape} and ground truth {gt.shape} differ in shape')
  # A 0/1 map is a binary mask, not one object: treating it as an instance map would merge
  # every gland into one.
  as_objects = lambda m: (label_objects(m) if m.dtype == bool or m.max(initial=0) <= 1
                          else consecutive_labels(m))
  s, g = _Objects(as_objects(pred)), _Objects(as_objects(gt))
  diag = float(np.hypot(*gt.shape))
  overlap = np.bincount((s.labels.ravel().astype(np.int64) * (g.n + 1) + g.labels.ravel()),
                        minlength=(s.n + 1) * (g.n + 1)).reshape(s.n + 1, g.n + 1)[1:, 1:]

  # Object F1.
  s_partner = _match_partner(overlap)
  tp, claimed = 0, set()
  for j, i in enumerate(s_partner):
    if i >= 0 and i not in claimed and 2 * overlap[j, i] >= g.area[i]:
      claimed.add(i)
      tp += 1

  # Object Dice and Hausdorff as area-weighted sums, normalised later (per image or per
  # part); with no object on the other side, an object scores the worst case.
  g_partner = _match_partner(overlap.T)
  hd = _PairHausdorff(s, g)
  s_dice = s_hd = g_dice = g_hd = 0.0
  for j, i in enumerate(s_partner):
    if i >= 0:
      s_dice += s.area[j] * 2 * overlap[j, i] / (s.area[j] + g.area[i])
      s_hd += s.area[j] * hd(j, i)
    else:
      s_hd += s.area[j] * (hd.nearest(j, True) if g.n else diag)
  for i, j in enumerate(g_partner):
    if j >= 0:
      g_dice += g.area[i] * 2 * overlap[j, i] / (s.area[j] + g.area[i])
      g_hd += g.area[i] * hd(j, i)
    else:
      g_hd += g.area[i] * (hd.nearest(i, False) if s.n else diag)
  return dict(tp=tp, fp=s.n - tp, fn=g.n - tp, n_pred=s.n, n_gt=g.n,
              s_area=int(s.area.sum()), g_area=int(g.area.sum()), s_dice=s_dice,
              g_dice=g_dice, s_hd=s_hd, g_hd=g_hd, diag=diag)


def _two_sided(s_sum, s_area, g_sum, g_area, worst, perfect):
  """½ (S-side area-weighted mean + G-side one); an empty side scores `worst`, and
  `perfect` is returned when both sides are empty."""
  if s_area == 0 and g_area == 0:
    return float(perfect)
  side = lambda total, area: total / area if area else worst
  return float(0.5 * (side(s_sum, s_area) + side(g_sum, g_area)))


class GlaSMetrics:
  """Accumulates GlaS object metrics image by image over a test part."""

  def __init__(self):
    self.images = []

  def update(self, pred_instances, gt_instances):
    """Integer instance maps (0 = background); a bool or 0/1 map is a binary mask, split
    into 8-connected components."""
    self.images.append(_glas_image(pred_instances, gt_instances))

  def compute(self):
    """Pooled metrics over the part, plus per-image arrays under 'per_image'."""
    ims = self.images
    tot = {k: sum(im[k] for im in ims) for k in ('tp', 'fp', 'fn', 'n_pred', 'n_gt', 's_area',
                                                  'g_area', 's_dice', 'g_dice', 's_hd', 'g_hd')}
    worst_hd = max((im['diag'] for im in ims), default=0.0)
    precision, recall, f1 = precision_recall_f1(tot['tp'], tot['fp'], tot['fn'])
    per_image = {k: np.array([im[k] for im in ims], np.int64) for k in ('tp', 'fp', 'fn')}
    p, r, f = precision_recall_f1(per_image['tp'], per_image['fp'], per_image['fn'])
    per_image.update(precision=p, recall=r, f1=f)
    per_image['object_dice'] = np.array(
        [_two_sided(im['s_dice'], im['s_area'], im['g_dice'], im['g_area'], 0.0, 1.0)
         for im in ims])
    per_image['object_hausdorff'] = np.array(
        [_two_sided(im['s_hd'], im['s_area'], im['g_hd'], im['g_area'], im['diag'], 0.0)
         for im in ims])
    mean = lambda x: float(np.mean(x)) if len(x) else float('nan')
    return {
        'f1': float(f1), 'precision': float(precision), 'recall': float(recall),
        'object_dice': _two_sided(tot['s_dice'], tot['s_area'], tot['g_dice'], tot['g_area'],
                                  0.0, 1.0),
        'object_hausdorff': _two_sided(tot['s_hd'], tot['s_area'], tot['g_hd'], tot['g_area'],
                                       worst_hd, 0.0),
        'n_images': len(ims), 'n_gt_objects': int(tot['n_gt']),
        'n_pred_objects': int(tot['n_pred']),
        'tp': int(tot['tp']), 'fp': int(tot['fp']), 'fn': int(tot['fn']),
        'f1_image_mean': mean(per_image['f1']),
        'object_dice_image_mean': mean(per_image['object_dice']),
        'object_hausdorff_image_mean': mean(per_image['object_hausdorff']),
        'per_image': per_image,
    }
