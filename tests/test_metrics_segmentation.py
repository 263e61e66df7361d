import jax
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from histojax.metrics import objects
from histojax.metrics import segmentation as seg


def glas_object_metrics(pairs):
  """GlaS object metrics of (pred_instance_map, gt_instance_map) pairs, pooled."""
  acc = objects.GlaSMetrics()
  for pred, gt in pairs:
    acc.update(pred, gt)
  return acc.compute()


def _computed(pred, true, mask=None, num_classes=2, **kwargs):
  acc = seg.SegmentationMetrics(num_classes, **kwargs)
  acc.update(jax.jit(seg.pixel_stats, static_argnums=3)(
      np.asarray(pred), np.asarray(true), None if mask is None else np.asarray(mask),
      num_classes))
  return acc.compute()


# --- pixel metrics ---------------------------------------------------------------------------

def test_pixel_stats_counts_and_confusion():
  true = np.array([[[0, 1, 2], [2, 2, 1]]])
  pred = np.array([[[0, 2, 2], [1, 2, 1]]])
  s = jax.device_get(seg.pixel_stats(pred, true, None, 3))
  np.testing.assert_array_equal(s['tp'], [[1, 1, 2]])
  np.testing.assert_array_equal(s['fp'], [[0, 1, 1]])
  np.testing.assert_array_equal(s['fn'], [[0, 1, 1]])
  np.testing.assert_array_equal(s['confusion'], [[1, 0, 0], [0, 1, 1], [0, 1, 2]])
  np.testing.assert_array_equal(s['image_mask'], [1])


def test_perfect_prediction():
  true = np.zeros((2, 8, 8), int)
  true[0, 2:5, 2:5] = 1
  true[1, :, 4:] = 2
  m = _computed(true, true, num_classes=3, class_names=['bg', 'a', 'b'])
  assert m['pixel_accuracy'] == 1.0
  assert m['mean_dice'] == m['mean_iou'] == m['mean_dice_image'] == 1.0
  np.testing.assert_array_equal(m['dice'], [1, 1, 1])
  # Each foreground class is present in one image only; the other is skipped (ignore_empty).
  np.testing.assert_array_equal(m['not_nans'], [2, 1, 1])
  s = seg.SegmentationMetrics(3, ['bg', 'a', 'b']).scalars(m)
  assert s['dice_a'] == s['dice_b'] == 1.0 and 'dice_bg' not in s


def test_pooled_and_per_image_means_differ():
  true = np.zeros((2, 10, 10), int)
  pred = np.zeros_like(true)
  true[0, :, :] = 1  # 100 px, found exactly: Dice 1
  pred[0] = true[0]
  true[1, 0, :4] = 1  # 4 px, missed: Dice 0
  m = _computed(pred, true)
  assert m['dice'][1] == pytest.approx(2 * 100 / (2 * 100 + 4))
  assert m['iou'][1] == pytest.approx(100 / 104)
  assert m['dice_image'][1] == pytest.approx(0.5)
  assert m['mean_dice_image'] == pytest.approx(0.5)
  assert m['mean_dice'] == pytest.approx(200 / 204)
  assert m['pixel_accuracy'] == pytest.approx(196 / 200)
  np.testing.assert_array_equal(m['confusion'], [[96, 0], [4, 100]])


# MONAI test_compute_meandice TEST_CASE_11/12 with label maps: ground truth all background.
@pytest.mark.parametrize('pred_value, expected', [(0, 1.0), (1, 0.0)])
def test_empty_ground_truth_scored_when_not_ignored(pred_value, expected):
  true = np.zeros((2, 3, 3), int)
  pred = np.full_like(true, pred_value)
  m = _computed(pred, true, ignore_empty=False)
  assert m['dice_image'][1] == expected and m['dice'][1] == expected
  assert m['mean_dice_image'] == expected and m['mean_dice'] == expected
  assert m['not_nans'][1] == 2


@pytest.mark.parametrize('pred_value', [0, 1])
def test_empty_ground_truth_skipped_when_ignored(pred_value):
  true = np.zeros((2, 3, 3), int)
  m = _computed(np.full_like(true, pred_value), true, ignore_empty=True)
  assert np.isnan(m['dice_image'][1]) and np.isnan(m['dice'][1])
  assert np.isnan(m['mean_dice']) and np.isnan(m['mean_dice_image'])
  assert m['not_nans'][1] == 0


def test_empty_policy_in_per_image_mean():
  true = np.zeros((3, 4, 4), int)
  pred = np.zeros_like(true)
  true[0, :2] = 1
  pred[0, :1] = 1  # Dice 2*4 / (4 + 8) = 2/3
  pred[2, 0, 0] = 1  # image 2: empty ground truth, one false-positive pixel
  ignored = _computed(pred, true, ignore_empty=True)
  assert ignored['dice_image'][1] == pytest.approx(2 / 3)
  assert ignored['not_nans'][1] == 1
  scored = _computed(pred, true, ignore_empty=False)
  assert scored['dice_image'][1] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
  assert scored['not_nans'][1] == 3
  half = _computed(pred, true, ignore_empty=False, empty_score=0.5)
  assert half['dice_image'][1] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
  # Pooled counts see 8 true, 5 predicted, 4 overlapping pixels whatever the policy.
  assert ignored['dice'][1] == scored['dice'][1] == pytest.approx(8 / 13)
  # The skipped images are counted in the reported scalars.
  names = ['bg', 'gland']
  skipped = seg.SegmentationMetrics(2, names, ignore_empty=True).scalars(ignored)
  assert skipped['empty_skipped_gland'] == 2 and skipped['dice_image_gland'] == pytest.approx(2 / 3)
  assert seg.SegmentationMetrics(2, names, ignore_empty=False).scalars(scored)[
      'empty_skipped_gland'] == 0


def test_padding_mask_excludes_images_and_pixels():
  true = np.zeros((3, 4, 4), int)
  true[0, :2] = 1
  pred = true.copy()
  pred[1] = 1  # image 1 is padding: its garbage must not count
  ref = _computed(pred[:1], true[:1], ignore_empty=False)
  padded = _computed(pred, true, mask=[1, 0, 0], ignore_empty=False)
  # Image 2 (all zeros) would score empty_score = 1 for class 1 if it were not dropped.
  assert padded['n_images'] == 1 and padded['n_pixels'] == 16
  for k in ('dice', 'dice_image', 'not_nans', 'confusion'):
    np.testing.assert_array_equal(padded[k], ref[k])
  # Per-pixel mask and ignore index: only the unmasked, labelled pixels count.
  pix_mask = np.ones((1, 4, 4))
  pix_mask[0, 3] = 0
  true_ign = true[:1].copy()
  true_ign[0, 2] = 255
  m = _computed(np.ones((1, 4, 4), int), true_ign, mask=pix_mask)
  np.testing.assert_array_equal(m['confusion'], [[0, 0], [0, 8]])


def test_accumulates_over_batches():
  rng = np.random.default_rng(0)
  true = rng.integers(0, 3, (5, 5, 5))
  pred = rng.integers(0, 3, (5, 5, 5))
  stats = jax.jit(seg.pixel_stats, static_argnums=3)
  acc = seg.SegmentationMetrics(3)
  for lo in (0, 2, 4):
    # Fixed batch of 2, the last one padded, as an eval loop feeds it.
    t, p = np.zeros((2, 5, 5), int), np.ones((2, 5, 5), int)
    n = min(2, 5 - lo)
    t[:n], p[:n] = true[lo:lo + n], pred[lo:lo + n]
    acc.update(stats(p, t, (np.arange(2) < n).astype(np.float32), 3))
  whole = _computed(pred, true, num_classes=3)
  split = acc.compute()
  assert split['n_images'] == 5
  for k in ('dice', 'dice_image', 'iou', 'confusion', 'not_nans'):
    np.testing.assert_allclose(split[k], whole[k])


# --- GlaS object metrics ----------------------------------------------------------------------

def _box(shape, *boxes):
  m = np.zeros(shape, np.int32)
  for label, (r0, r1, c0, c1) in enumerate(boxes, 1):
    m[r0:r1, c0:c1] = label
  return m


def _reference_object_hausdorff(s, g):
  """Brute-force transcription of the official ObjectHausdorff (both sides non-empty)."""
  def hd(a, b):
    d = cdist(np.argwhere(a), np.argwhere(b))
    return max(d.min(1).max(), d.min(0).max())
  def side(x, y):
    total = 0.0
    for lx in np.unique(x[x > 0]):
      obj = x == lx
      hits = y[obj][y[obj] > 0]
      if len(hits):
        partner = y == np.bincount(hits).argmax()
        dist = hd(obj, partner)
      else:
        dist = min(hd(obj, y == ly) for ly in np.unique(y[y > 0]))
      total += obj.sum() / (x > 0).sum() * dist
    return total
  return 0.5 * (side(s, g) + side(g, s))


def test_perfect_objects():
  gt = _box((40, 50), (2, 12, 3, 13), (20, 30, 5, 9), (25, 38, 30, 45))
  m = glas_object_metrics([(gt, gt), (gt, gt)])
  assert m['f1'] == m['object_dice'] == 1.0 and m['object_hausdorff'] == 0.0
  assert m['n_gt_objects'] == m['n_pred_objects'] == 6 and m['n_images'] == 2


@pytest.mark.parametrize('k', [1, 3, 4])
def test_shift_gives_hausdorff_k(k):
  gt = _box((30, 40), (10, 20, 10, 20))
  pred = _box((30, 40), (10, 20, 10 + k, 20 + k))
  m = glas_object_metrics([(pred, gt)])
  assert m['object_hausdorff'] == pytest.approx(k)
  assert m['object_dice'] == pytest.approx((10 - k) / 10)
  assert m['tp'] == 1 and m['f1'] == 1.0


def test_under_half_coverage_is_fp_and_fn():
  gt = _box((30, 30), (5, 15, 5, 15))
  pred = _box((30, 30), (5, 9, 5, 15))  # 40 of 100 px
  m = glas_object_metrics([(pred, gt)])
  assert (m['tp'], m['fp'], m['fn']) == (0, 1, 1)
  assert m['f1'] == 0.0
  # Exactly 50% is enough (|S ∩ G| >= 0.5 |G|).
  half = glas_object_metrics([(_box((30, 30), (5, 10, 5, 15)), gt)])
  assert (half['tp'], half['fp'], half['fn']) == (1, 0, 0)


def test_object_dice_area_weighting_and_hausdorff_reference():
  shape = (40, 40)
  gt = _box(shape, (2, 12, 2, 12), (20, 24, 20, 24))  # 100 px, 16 px
  pred = _box(shape, (2, 12, 2, 12), (20, 22, 20, 24), (30, 33, 5, 8))  # exact, half, 9 px FP
  m = glas_object_metrics([(pred, gt)])
  s_side = (100 * 1 + 8 * (2 * 8 / 24) + 9 * 0) / 117
  g_side = (100 * 1 + 16 * (2 * 8 / 24)) / 116
  assert m['object_dice'] == pytest.approx(0.5 * (s_side + g_side))
  assert (m['tp'], m['fp'], m['fn']) == (2, 1, 0)
  assert m['f1'] == pytest.approx(4 / 5)
  assert m['object_hausdorff'] == pytest.approx(_reference_object_hausdorff(pred, gt))


def test_hausdorff_matches_brute_force_on_random_blobs():
  rng = np.random.default_rng(1)
  for _ in range(3):
    gt = objects.label_objects(rng.random((30, 30)) > 0.8)
    pred = objects.label_objects(rng.random((30, 30)) > 0.75)
    m = glas_object_metrics([(pred, gt)])
    assert m['object_hausdorff'] == pytest.approx(_reference_object_hausdorff(pred, gt))


def test_hausdorff_counts_interior_pixels():
  # The prediction fills the ring's hole: its pixel farthest from the ring is the hole's
  # centre, interior to the prediction, so boundary-only distances would give 0.
  gt = np.ones((21, 21), np.int32)
  gt[3:18, 3:18] = 0
  pred = np.ones_like(gt)
  m = glas_object_metrics([(pred, gt)])
  assert m['object_hausdorff'] == pytest.approx(8.0)
  assert m['object_hausdorff'] == pytest.approx(_reference_object_hausdorff(pred, gt))


def test_missing_predictions_are_worst_case_and_pooled_over_part():
  shape = (30, 40)
  diag = np.hypot(*shape)
  a = _box(shape, (0, 10, 0, 10))  # 100 px, found exactly
  b = _box(shape, (5, 9, 5, 9))  # 16 px, nothing predicted
  m = glas_object_metrics([(a, a), (np.zeros(shape, bool), b)])
  np.testing.assert_allclose(m['per_image']['object_dice'], [1, 0])
  np.testing.assert_allclose(m['per_image']['object_hausdorff'], [0, diag])
  np.testing.assert_allclose(m['per_image']['f1'], [1, 0])
  # Pooled: weights over all objects of the part, 100 + 16 GT px and 100 predicted px.
  assert m['object_dice'] == pytest.approx(0.5 * (1 + 100 / 116))
  assert m['object_hausdorff'] == pytest.approx(0.5 * (0 + 16 * diag / 116))
  assert m['object_dice_image_mean'] == pytest.approx(0.5)
  assert (m['tp'], m['fp'], m['fn']) == (1, 0, 1)
  # A poor prediction beats no prediction: finding fewer structures is never rewarded.
  poor = glas_object_metrics([(_box(shape, (20, 30, 30, 40)), b)])
  assert poor['object_hausdorff'] < diag


def test_label_objects_connectivity_and_min_size():
  binary = np.zeros((6, 6), bool)
  binary[0, 0] = binary[1, 1] = True  # diagonal neighbours: one object (as bwlabel)
  binary[4:6, 4:6] = True
  assert objects.label_objects(binary).max() == 2
  assert objects.label_objects(binary, connectivity=1).max() == 3
  labels = objects.label_objects(binary, min_size=3)
  assert labels.max() == 1 and labels[5, 5] == 1 and labels[0, 0] == 0


def test_hausdorff_of_merged_blobs_and_rings_matches_brute_force():
  """Large objects take the distance-transform path, small ones the KD-tree path."""
  gt = _box((60, 70), (5, 20, 5, 25), (5, 20, 35, 60), (40, 55, 10, 30), (45, 47, 60, 62))
  merged = (gt > 0).astype(np.int32)
  merged[10:14, 25:35] = 1  # a bridge merges the first two glands
  merged[40:55, 10:30] = 2
  merged[46, 20] = 0        # a one-pixel hole
  merged[30, 65] = 3        # a far speckle
  merged = objects.label_objects(merged > 0)
  m = glas_object_metrics([(merged, gt)])
  assert m['object_hausdorff'] == pytest.approx(_reference_object_hausdorff(merged, gt))
  ring = np.zeros((40, 40), np.int32)
  ring[5:35, 5:35] = 1
  ring[12:28, 12:28] = 0
  inner = np.zeros((40, 40), np.int32)
  inner[15:25, 15:25] = 1
  m = glas_object_metrics([(ring, inner), (inner, ring)])
  reference = _reference_object_hausdorff(ring, inner)
  assert m['per_image']['object_hausdorff'][0] == pytest.approx(reference)
