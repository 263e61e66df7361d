"""A lower working resolution (config key `data.scale`).

Segmentation: images are downsampled once per example (antialiased bilinear), masks by nearest
neighbour; the model trains and predicts at that resolution, and its probabilities are
upsampled back (bilinear) to the original size, so that every metric is scored on the original
masks. Tile classifiers: whole images are downsampled before tiling (a lower magnification).
"""
import numpy as np
from PIL import Image


def scaled_size(hw, scale):
  return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def check_scale(scale):
  if not 0 < scale <= 1:
    raise ValueError(f'data.scale must be in (0, 1]; got {scale!r} (config key: data.scale).')
  return float(scale)


def image(array, scale):
  """uint8 [H, W, C] → [h, w, C], antialiased bilinear (PIL's filter widens when shrinking)."""
  if scale == 1:
    return array
  h, w = scaled_size(array.shape[:2], scale)
  channels = [np.asarray(Image.fromarray(array[..., c]).resize((w, h), Image.BILINEAR))
              for c in range(array.shape[-1])]
  return np.stack(channels, -1)


def mask(array, scale):
  """Label mask [H, W] → [h, w] by nearest neighbour (pixel centres), any integer dtype."""
  if scale == 1:
    return array
  h, w = scaled_size(array.shape[:2], scale)
  rows = np.minimum(((np.arange(h) + 0.5) * array.shape[0] / h).astype(np.int64),
                    array.shape[0] - 1)
  cols = np.minimum(((np.arange(w) + 0.5) * array.shape[1] / w).astype(np.int64),
                    array.shape[1] - 1)
  return array[rows[:, None], cols[None, :]]


def probabilities(array, hw):
  """float [h, w, C] → [H, W, C], bilinear with pixel centres aligned; rows still sum to 1."""
  if array.shape[:2] == tuple(hw):
    return array
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(array[..., c], np.float32))
                         .resize((hw[1], hw[0]), Image.BILINEAR)) for c in range(array.shape[-1])]
  return np.stack(channels, -1)
