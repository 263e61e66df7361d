"""Whole-image prediction by sliding windows, in the style of MONAI's sliding_window_inference."""
from typing import Callable, Sequence, Union

import numpy as np

BLENDS = ('gaussian', 'constant')


def axis_starts(size: int, window: int, stride: int, cover_end: bool = True) -> list:
  """Window origins 0, stride, 2*stride, ... that fit in `size`; with cover_end one more flush
  with the end, so that every pixel is covered (Captum's occlusion leaves a strip uncovered
  when the stride does not divide). One window at 0 when it is not smaller than `size`."""
  if size <= window:
    return [0]
  starts = list(range(0, size - window + 1, stride))
  if cover_end and starts[-1] != size - window:
    starts.append(size - window)
  return starts


def window_starts(size: int, window: int, overlap: float) -> list:
  """Sliding-window origins along one axis: a stride of window*(1-overlap), the last flush
  with the end."""
  return axis_starts(size, window, max(int(window * (1 - overlap)), 1))


def importance_map(window: Sequence[int], blend: str = 'gaussian',
                   sigma_scale: float = 0.125) -> np.ndarray:
  """[h, w] float32 blending weights: ones, or a Gaussian (sigma = sigma_scale * side, peak 1)
  clamped at 1e-3 as MONAI does, so borders still count where only one window covers them."""
  if blend == 'constant':
    return np.ones(window, np.float32)
  if blend != 'gaussian':
    raise ValueError(f'Unknown blend {blend!r}; expected one of {BLENDS}.')
  axes = []
  for n in window:
    d = np.arange(n, dtype=np.float64) - (n - 1) / 2
    axes.append(np.exp(-0.5 * (d / (sigma_scale * n))**2))
  w = np.outer(axes[0], axes[1])
  return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def sliding_window(predict_fn: Callable, image: np.ndarray,
                   window: Union[int, Sequence[int]] = (256, 256), overlap: float = 0.25,
                   window_batch: int = 8, blend: str = 'gaussian', sigma_scale: float = 0.125,
                   pad_mode: str = 'reflect', keep: np.ndarray | None = None) -> np.ndarray:
  """Predicts one [H, W, C] image of any size with `predict_fn([N, h, w, C]) -> [N, h, w, K]`.

  The image is padded (np.pad `pad_mode`, split evenly around it) so each side is at least the
  window; windows overlap by `overlap`. predict_fn always gets exactly `window_batch` windows
  (the last stack is filled with copies whose outputs are dropped), so a jitted predict_fn
  compiles once. Outputs are blended with the importance map in a float32 host buffer,
  normalised by the summed weights and cropped back: returns float32 [H, W, K].
  `keep` (bool [H, W], e.g. tissue): windows without a kept pixel are not predicted, and
  pixels no predicted window covers come back as zeros (None when no window is left).
  """
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f'sliding_window expects one [H, W, C] image; got shape {image.shape}.')
  if not 0 <= overlap < 1:
    raise ValueError(f'overlap must be in [0, 1); got {overlap}.')
  wh, ww = (window, window) if isinstance(window, int) else tuple(window)
  height, width = image.shape[:2]
  pad_h, pad_w = max(wh - height, 0), max(ww - width, 0)
  if pad_h or pad_w:
    image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                           (0, 0)), mode=pad_mode)
  ph, pw = image.shape[:2]
  origins = [(y, x) for y in window_starts(ph, wh, overlap)
             for x in window_starts(pw, ww, overlap)]
  if keep is not None:
    if keep.shape != (height, width):
      raise ValueError(f'keep must be [H, W] = {(height, width)}; got {keep.shape}.')
    keep = np.pad(keep, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    origins = [(y, x) for y, x in origins if keep[y:y + wh, x:x + ww].any()]
    if not origins:
      return None
  weights = importance_map((wh, ww), blend, sigma_scale)

  out, norm = None, np.zeros((ph, pw, 1), np.float32)
  for y, x in origins:
    norm[y:y + wh, x:x + ww, 0] += weights

  def accumulate(pending):
    nonlocal out
    preds, batch_origins = pending
    preds = np.asarray(preds, np.float32)   # waits for the device
    if preds.shape[:3] != (window_batch, wh, ww) or preds.ndim != 4:
      raise ValueError(f'predict_fn must map [N, {wh}, {ww}, C] to [N, {wh}, {ww}, K]; got '
                       f'{preds.shape} for N={window_batch}.')
    if out is None:
      out = np.zeros((ph, pw, preds.shape[-1]), np.float32)
    for (y, x), p in zip(batch_origins, preds):
      out[y:y + wh, x:x + ww] += p * weights[..., None]

  pending = None
  for i in range(0, len(origins), window_batch):
    batch_origins = origins[i:i + window_batch]
    padded = batch_origins + [batch_origins[-1]] * (window_batch - len(batch_origins))
    windows = np.stack([image[y:y + wh, x:x + ww] for y, x in padded])
    # Dispatch the next stack before reading the previous one back: with an async predict_fn
    # (jax) the device works while the host blends.
    preds = predict_fn(windows)
    if pending is not None:
      accumulate(pending)
    pending = (preds, batch_origins)
  accumulate(pending)

  np.divide(out, norm, out=out, where=norm > 0)
  top, left = pad_h // 2, pad_w // 2
  return out[top:top + height, left:left + width]


TTA = {'none': 1, 'flips': 2, 'dihedral': 8}


def _dihedral(x, t):
  """Transform t of 0..7 on [H, W, ...]: a left-right flip when t >= 4, then t % 4 rot90s."""
  return np.rot90(x[:, ::-1] if t >= 4 else x, t % 4)


def _undo_dihedral(x, t):
  x = np.rot90(x, -(t % 4))
  return x[:, ::-1] if t >= 4 else x


def with_tta(predict_image: Callable, image: np.ndarray, tta: str = 'none',
             keep: np.ndarray | None = None) -> np.ndarray:
  """Test-time augmentation: the mean of predict_image(T(image)) mapped back by T⁻¹ over T in
  the identity and the left-right flip ('flips') or all 8 flips/rotations ('dihedral').
  H&E has no canonical orientation, so every T is a valid view of the same tissue. With
  `keep` (bool [H, W]), predict_image(T(image), keep=T(keep)); None when it returns None."""
  if tta not in TTA:
    raise ValueError(f'Unknown test-time augmentation {tta!r} (config key: inference.tta); '
                     f'expected one of {list(TTA)}.')
  transforms = (0, 4) if tta == 'flips' else range(TTA[tta])
  total = None
  for t in transforms:
    view = np.ascontiguousarray(_dihedral(image, t))
    if keep is None:
      probs = predict_image(view)
    else:
      probs = predict_image(view, keep=np.ascontiguousarray(_dihedral(keep, t)))
      if probs is None:
        return None
    probs = _undo_dihedral(probs, t)
    total = probs.copy() if total is None else total + probs
  return total / len(transforms)
