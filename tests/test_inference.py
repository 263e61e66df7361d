"""histojax/inference.py: test-time augmentation (with_tta)."""
import numpy as np
import pytest


def test_tta_keeps_pixelwise_predictions_and_averages_oriented_ones():
  from histojax import inference
  rng = np.random.default_rng(0)
  image = rng.random((12, 20, 3)).astype(np.float32)
  pixelwise = lambda im: np.stack([im[..., 0], 1 - im[..., 0]], -1)  # orientation-free
  for tta in inference.TTA:
    np.testing.assert_allclose(inference.with_tta(pixelwise, image, tta), pixelwise(image),
                               rtol=1e-6)
  rows = lambda im: np.broadcast_to(np.arange(im.shape[0], dtype=np.float32)[:, None, None],
                                    im.shape[:2] + (1,))  # depends on orientation
  flips = inference.with_tta(rows, image, 'flips')
  np.testing.assert_allclose(flips, rows(image))  # a left-right flip keeps the row index
  dihedral = inference.with_tta(rows, image, 'dihedral')
  # Rotations by 0/180 give the row index or its mirror, 90/270 the column index or its mirror.
  r, c = np.meshgrid(np.arange(12), np.arange(20), indexing='ij')
  expected = (2 * r + 2 * (11 - r) + 2 * c + 2 * (19 - c)) / 8
  np.testing.assert_allclose(dihedral[..., 0], expected, rtol=1e-6)
  with pytest.raises(ValueError, match='inference.tta'):
    inference.with_tta(rows, image, 'all')
