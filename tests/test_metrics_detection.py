import numpy as np
import pytest
from scipy import ndimage

from histojax.metrics import detection


def test_detection_is_one_to_one():
  m = detection.detection_f1([[10, 10], [11, 11]], [[10, 11]], radius=6)
  assert (m['tp'], m['fp'], m['fn']) == (1, 1, 0)
  assert m['precision'] == 0.5 and m['recall'] == 1.0 and m['f1'] == pytest.approx(2 / 3)


def test_detection_maximises_matches_not_greedy():
  # Greedy nearest-first would pair (0, 4) with (0, 0) and leave (0, -5) unmatched.
  m = detection.detection_f1([[0, 4], [0, -5]], [[0, 0], [0, 10]], radius=6)
  assert (m['tp'], m['fp'], m['fn']) == (2, 0, 0)
  far = detection.detection_f1([[0, 0]], [[0, 6.5]], radius=6)
  assert (far['tp'], far['fp'], far['fn']) == (0, 1, 1)
  empty = detection.detection_f1(np.zeros((0, 2)), np.zeros((0, 2)))
  assert empty['f1'] == 1.0


def test_blob_centroids():
  m = np.zeros((10, 10), bool)
  m[1:4, 1:4] = True
  m[6:8, 5:9] = True
  m[9, 0] = True
  np.testing.assert_allclose(detection.blob_centroids(m), [[2, 2], [6.5, 6.5], [9, 0]])
  np.testing.assert_allclose(detection.blob_centroids(m, min_size=2), [[2, 2], [6.5, 6.5]])


def test_typed_detection_ignores_untyped_nuclei():
  types = np.zeros((30, 30), np.int32)
  types[2:5, 2:5] = 1     # on a typed nucleus of class 1: TP
  types[12:15, 12:15] = 2  # on an untyped nucleus (label 0): neither TP nor FP
  types[24:27, 24:27] = 1  # on nothing: FP
  points = [[3, 3], [13, 13], [25, 5], [20, 20]]  # (25, 5) typed and missed: FN
  m = detection.typed_detection(types, points, [1, 0, 2, 0], num_classes=3)
  assert (m['tp'], m['fp'], m['fn']) == (1, 1, 1)  # the missed untyped (20, 20) is no FN
  np.testing.assert_array_equal(m['class_tp'], [1, 0])
  np.testing.assert_array_equal(m['class_fp'], [1, 0])  # the class-2 blob is ignored
  np.testing.assert_array_equal(m['class_fn'], [0, 1])
  # Without the untyped points the blob on (13, 13) would be a false positive.
  without = detection.typed_detection(types, [[3, 3], [25, 5]], [1, 2], num_classes=3)
  assert (without['fp'], without['class_fp'][1]) == (2, 1)


def test_typed_detection_and_accumulation():
  types = np.zeros((20, 20), np.int32)
  types[2:5, 2:5] = 1
  types[2:4, 2:5] = 2  # 6 px of type 2, 3 px of type 1: object typed 2
  types[12:15, 12:15] = 1
  m = detection.typed_detection(types, [[3, 3], [13, 13], [18, 2]], [1, 1, 2], num_classes=3)
  assert (m['tp'], m['fp'], m['fn']) == (2, 0, 1)
  np.testing.assert_array_equal(m['class_tp'], [1, 0])
  np.testing.assert_array_equal(m['class_fp'], [0, 1])
  np.testing.assert_array_equal(m['class_fn'], [1, 1])
  np.testing.assert_allclose(m['class_f1'], [2 / 3, 0])
  acc = detection.DetectionMetrics()
  acc.update(m)
  acc.update(detection.detection_f1([[0, 0]], [[0, 0]]) | {
      'class_tp': [1, 0], 'class_fp': [0, 0], 'class_fn': [0, 0]})
  total = acc.compute()
  assert (total['tp'], total['fp'], total['fn'], total['n_images']) == (3, 0, 1, 2)
  assert total['f1'] == pytest.approx(6 / 7)  # from summed counts, not a mean of F1s
  np.testing.assert_array_equal(total['class_tp'], [2, 0])


def _discs(shape, centres, radius):
  rows, cols = np.indices(shape)
  return np.any([(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2 for r, c in centres], 0)


def test_nucleus_centres_split_touching_nuclei():
  # Two radius-5 discs 8 px apart merge into one blob: its centroid lies between the nuclei
  # (one match at most); distance-map maxima find both centres.
  true = [(20, 16), (20, 24)]
  mask = _discs((40, 40), true, 5)
  assert ndimage.label(mask)[1] == 1
  np.testing.assert_allclose(detection.nucleus_centres(mask), [[20, 20]])
  split = detection.nucleus_centres(mask, min_distance=3)
  np.testing.assert_allclose(sorted(map(tuple, split)), true, atol=0.5)
  m = detection.detection_f1(split, true, radius=6)
  assert (m['tp'], m['fp'], m['fn']) == (2, 0, 0)
  # A window wider than the gap keeps only the higher of two maxima.
  uneven = _discs((40, 40), true[:1], 5) | _discs((40, 40), true[1:], 4)
  assert len(detection.nucleus_centres(uneven, min_distance=3)) == 2
  np.testing.assert_allclose(detection.nucleus_centres(uneven, min_distance=9), [true[0]])


def test_nucleus_centres_plateau_and_suppressed_neighbour():
  mask = np.zeros((40, 60), bool)
  mask[10:13, 5:45] = True          # a ridge of equal distance maxima: one centre
  mask[30:39, 30:39] = True         # a large square ...
  mask[30:32, 40:42] = True         # ... and a small blob 1 px apart, its maximum suppressed
  centres = detection.nucleus_centres(mask, min_distance=4)
  assert len(centres) == 3
  labels, _ = ndimage.label(mask, np.ones((3, 3), bool))
  # Every component gets at least one centre, and every centre lies on the mask.
  assert set(labels[tuple(np.round(centres).astype(int).T)]) == {1, 2, 3}
  np.testing.assert_allclose(sorted(map(tuple, centres))[0], (11, 24.5), atol=0.5)
  assert len(detection.nucleus_centres(np.zeros((5, 5), bool), min_distance=3)) == 0
