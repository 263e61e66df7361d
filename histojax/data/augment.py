"""Joint image/mask augmentation for H&E training, on host (numpy), one example at a time.

Every geometric transform (flips, rot90, rotation, scale, shear, barrel distortion, elastic
warp, random crop) is folded into ONE output→source coordinate map built at output (crop) size,
so cost scales with the crop, not the source, and each pixel is interpolated once: image
bilinear, mask nearest, both with reflect padding (scipy.ndimage 'reflect' semantics). Each draw
is a pure function of (seed, epoch, index).

`params` is a dict or ConfigDict. A missing or zero/None key turns a transform off. `flip` and
`rot90` are probabilities; every other transform `name` holds its range and `p_<name>` its
probability (1.0 if absent). Ranges: a scalar x means ±x (or [0, x] for blur_sigma/noise_std).
"""
import ctypes
import functools
import io

import numpy as np
from PIL import Image
from scipy import ndimage

FLIPS_ONLY = dict(flip=0.5, rot90=1.0)


def default_params():
  """Histology defaults: H&E has no canonical orientation, stains and scanners vary."""
  return dict(
      flip=0.5,                      # each axis independently
      rot90=1.0,                     # k ~ U{0..3}
      rotate_deg=180.0, p_rotate_deg=0.5,
      scale=(0.8, 1.25), p_scale=0.5,  # log-uniform zoom; >1 magnifies
      shear_deg=0.0, p_shear_deg=0.5,  # off: shear is not a real tissue/scanner effect
      elastic_alpha=4.0, elastic_sigma=24.0, p_elastic_alpha=0.3,  # RMS px, correlation px
      distortion=0.08, p_distortion=0.2,  # radial k, r normalised to the half-diagonal
      crop_size=None,                # int or (h, w); None keeps the input size
      blur_sigma=(0.3, 1.2), p_blur_sigma=0.2,
      noise_std=(1.0, 6.0), p_noise_std=0.2,  # in 0..255 units
      brightness=0.1, p_brightness=0.8,  # multiplicative, 1 ± x
      contrast=0.1, p_contrast=0.8,
      saturation=0.1, p_saturation=0.8,
      hue=0.02, p_hue=0.5,           # fraction of a full turn
      hed_sigma=0.05, hed_bias=0.02, p_hed=0.8,  # per stain: alpha ~ 1 ± sigma, beta ~ ±bias
      glass_edge=0.0, p_glass_edge=0.3,  # off: a side turned to glass, up to this deep
      jpeg_quality=(0, 0), p_jpeg_quality=0.5,  # off: (lo, hi) JPEG quality; one: (q, q)
  )


# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) in log10 OD, as skimage.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LUMA = np.array([0.299, 0.587, 0.114])
_PHOTOMETRIC = ('brightness', 'contrast', 'saturation', 'hue', 'blur_sigma', 'noise_std')
_YIQ_FROM_RGB = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                          [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = np.linalg.inv(_YIQ_FROM_RGB)


def _get(params, name, default=None):
  value = params.get(name, default)
  return default if value is None else value


def _fires(rng, params, name):
  """Whether transform `name` is configured and its coin flip says apply."""
  value = _get(params, name, 0)
  if not np.any(np.asarray(value, dtype=float)):
    return False
  return rng.random() < _get(params, 'p_' + name, 1.0)


def _span(value, symmetric=True):
  lo, hi = (value if np.ndim(value) else ((-value if symmetric else 0.0), value))
  return float(lo), float(hi)


def _rotation(theta):
  c, s = np.cos(theta), np.sin(theta)
  return np.array([[c, -s], [s, c]])


@functools.lru_cache(maxsize=32)
def _rbf(n, sigma):
  """(n, m) Gaussian-RBF interpolation from nodes spaced sigma; rows have unit L2 norm."""
  nodes = np.arange(-2 * sigma, n + 2 * sigma, sigma)
  wgt = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / sigma) ** 2)
  return (wgt / np.linalg.norm(wgt, axis=1, keepdims=True)).astype(np.float32)


def _smooth_field(rng, h, w, sigma):
  """(2, h, w) unit-variance smooth random displacement; separable, so O(h·w·n/sigma)."""
  uy, ux = _rbf(h, float(sigma)), _rbf(w, float(sigma))
  z = rng.standard_normal((2, uy.shape[1], ux.shape[1]), dtype=np.float32)
  return uy @ z @ ux.T


def _source_coords(rng, params, in_hw, out_hw):
  """Output-grid → source (y, x) coordinates, each (oh, ow) float32, and whether integral."""
  a, exact = np.eye(2), True
  flip = _get(params, 'flip', 0.0)
  if rng.random() < flip:
    a = a @ np.diag([-1.0, 1.0])
  if rng.random() < flip:
    a = a @ np.diag([1.0, -1.0])
  if rng.random() < _get(params, 'rot90', 0.0):
    a = a @ np.rint(_rotation(rng.integers(4) * np.pi / 2))
  if _fires(rng, params, 'rotate_deg'):
    a = a @ _rotation(np.deg2rad(rng.uniform(*_span(params['rotate_deg'])))); exact = False
  if _fires(rng, params, 'scale'):
    lo, hi = _span(params['scale'])
    if not np.ndim(params['scale']):  # scalar x → zoom in [1/(1+x), 1+x]
      lo, hi = 1 / (1 + hi), 1 + hi
    a = a / np.exp(rng.uniform(np.log(lo), np.log(hi))); exact = False
  if _fires(rng, params, 'shear_deg'):
    shear = np.tan(np.deg2rad(rng.uniform(*_span(params['shear_deg']))))
    a = a @ np.array([[1.0, 0.0], [shear, 1.0]]); exact = False

  (h, w), (oh, ow) = in_hw, out_hw
  dy = (np.arange(oh, dtype=np.float32) - (oh - 1) / 2)[:, None]
  dx = (np.arange(ow, dtype=np.float32) - (ow - 1) / 2)[None, :]
  margin, k = 0.0, 0.0
  if _fires(rng, params, 'distortion'):
    k = rng.uniform(*_span(params['distortion']))
    half_diag2 = np.float32(max(dy[0, 0] ** 2 + dx[0, 0] ** 2, 1))
    radial = 1 + np.float32(k) * (dy * dy + dx * dx) / half_diag2
    dy, dx, exact = dy * radial, dx * radial, False
  if _fires(rng, params, 'elastic_alpha'):
    alpha = float(params['elastic_alpha'])
    field = np.float32(alpha) * _smooth_field(rng, oh, ow, _get(params, 'elastic_sigma', 24.0))
    dy, dx, exact, margin = dy + field[0], dx + field[1], False, 3 * alpha

  # Random placement of the warped crop's footprint, kept inside the source where it fits so
  # that reflected content is only used when unavoidable.
  extent = np.abs(a) @ np.array([(oh - 1) / 2, (ow - 1) / 2]) * (1 + max(k, 0)) + margin
  centre = [rng.uniform(e, n - 1 - e) if n - 1 - e > e else (n - 1) / 2
            for e, n in zip(extent, (h, w))]
  a = a.astype(np.float32)
  sy = a[0, 0] * dy + a[0, 1] * dx + np.float32(centre[0])
  sx = a[1, 0] * dy + a[1, 1] * dx + np.float32(centre[1])
  if exact:  # flips/rot90/crop only: land on pixel centres so sampling is a pure gather
    sy, sx = np.floor(sy + 0.5), np.floor(sx + 0.5)
  return sy, sx, exact


def _fold(c, n):
  """Reflect ('reflect' = half-sample symmetric) coordinates into [0, n-1]."""
  if c.min() >= 0 and c.max() <= n - 1:
    return c
  u = np.mod(c + 0.5, 2 * n)
  return np.clip(n - 0.5 - np.abs(u - n), 0, n - 1)


def _take(mask, flat_index, shape):
  return None if mask is None else mask.reshape(-1).take(flat_index).reshape(shape)


def _sample(image, mask, sy, sx, exact):
  """Samples image (bilinear; planar float32 (C, N), or uint8 (N, C) if exact) and mask once.

  Matches scipy.ndimage.map_coordinates(order=1 image / order=0 mask, mode='reflect'), but
  gathers all channels from one shared index map instead of one spline pass per channel, which
  is ~3x faster on a crop.
  """
  h, w, ch = image.shape
  sy, sx = _fold(sy, h), _fold(sx, w)
  if exact:
    base = (sy.astype(np.intp) * w + sx.astype(np.intp)).ravel()
    return image.reshape(-1, ch).take(base, axis=0), _take(mask, base, sy.shape)
  y0, x0 = np.minimum(np.floor(sy), h - 2).ravel(), np.minimum(np.floor(sx), w - 2).ravel()
  wy, wx = sy.ravel() - y0, sx.ravel() - x0  # in [0, 1]; 1 only on the last row/column
  base = y0.astype(np.intp) * w + x0.astype(np.intp)
  if mask is not None:  # nearest = round half up, as map_coordinates(order=0)
    mask = _take(mask, base + (wy >= 0.5) * w + (wx >= 0.5), sy.shape)
  idx = base * ch + np.arange(ch)[:, None]  # (C, N) byte offsets of the top-left corner
  flat = image.reshape(-1)
  # Shifted views stand in for idx + 1 px / + 1 row: no extra index arithmetic.
  w11 = wx * wy
  w10, w01 = wy - w11, wx - w11
  out = flat.take(idx) * (1 - wx - w10)
  out += flat[ch:].take(idx) * w01
  out += flat[w * ch:].take(idx) * w10
  out += flat[(w + 1) * ch:].take(idx) * w11
  return out, mask


@functools.lru_cache(maxsize=1)
def _normal_table():
  return np.random.default_rng(0).standard_normal(1 << 21, dtype=np.float32)


def _noise(rng, n):
  """n standard normals: a random window into a fixed table, ~20x cheaper than fresh draws.

  Windows overlap across examples; for additive pixel noise that reuse is harmless.
  """
  table = _normal_table()
  if n > table.size // 2:
    return rng.standard_normal(n, dtype=np.float32)
  return table[rng.integers(table.size - n):][:n]


def _hed_jitter(rng, params, f):
  """Tellez et al. 2018: per-stain alpha·s + beta in Ruifrok–Johnston HED space. f: (3, N)."""
  alpha = 1 + rng.uniform(-1, 1, 3) * float(_get(params, 'hed_sigma', 0.0))
  beta = rng.uniform(-1, 1, 3) * float(_get(params, 'hed_bias', 0.0))
  # With L = ln(I+1) and OD = (ln 256 - L)/ln 10, the whole map is linear in L: L' = L@T + t.
  t_mat = _HED_FROM_RGB @ np.diag(alpha) @ _RGB_FROM_HED
  shift = np.log(256.0) * (1 - t_mat.sum(axis=0)) - np.log(10.0) * beta @ _RGB_FROM_HED
  f = t_mat.T.astype(np.float32) @ np.log1p(f) + shift.astype(np.float32)[:, None]
  f = np.exp(f, out=f)
  f -= 1  # expm1 has no SIMD loop; the precision it buys is far below one grey level
  return f


def _colour_matrix(rng, params, f):
  """Brightness, contrast, saturation, hue composed into one affine map x → x@M + t."""
  m, t, used = np.eye(3), np.zeros(3), False
  if _fires(rng, params, 'brightness'):
    b = 1 + rng.uniform(*_span(params['brightness']))
    m, t, used = m * b, t * b, True
  if _fires(rng, params, 'contrast'):
    c = 1 + rng.uniform(*_span(params['contrast']))
    grey_mean = (f.mean(axis=1) @ m + t) @ _LUMA
    m, t, used = m * c, t * c + (1 - c) * grey_mean, True
  if _fires(rng, params, 'saturation'):
    s = 1 + rng.uniform(*_span(params['saturation']))
    sat = s * np.eye(3) + (1 - s) * _LUMA[:, None] * np.ones((1, 3))
    m, t, used = m @ sat, t @ sat, True
  if _fires(rng, params, 'hue'):
    theta = 2 * np.pi * rng.uniform(*_span(params['hue']))
    rot = np.eye(3)
    rot[1:, 1:] = _rotation(theta)  # rotates chroma (I, Q), keeps luma
    hue = _YIQ_FROM_RGB.T @ rot.T @ _RGB_FROM_YIQ.T
    m, t, used = m @ hue, t @ hue, True
  return (m.astype(np.float32), t.astype(np.float32)) if used else None


@functools.lru_cache(maxsize=None)
def _keep_freed_memory():
  """Stops glibc handing each crop's few MB of temporaries back to the OS after every call.

  Otherwise every array is page-faulted in afresh: ~1,300 faults and ~1/3 of the run time per
  crop. Process-wide, so it is done lazily, only in processes that augment (grain workers).
  """
  try:
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays come from the heap, not fresh mmaps
    libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MB of freed heap
  except (OSError, AttributeError):
    pass  # not glibc: nothing to tune


def augment(image, mask, params, *, seed, epoch, index):
  """Returns (image uint8 (oh, ow, C), mask (oh, ow) of mask's dtype, or None).

  (oh, ow) is params['crop_size'] if set, else the input size. Pure in (seed, epoch, index).
  A grayscale image (C = 1) goes through as three equal channels; stain and colour transforms
  (HED, saturation, hue) are refused for it.
  """
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3) or \
     min(image.shape[:2]) < 2:
    raise ValueError(f'augment wants uint8 HxWx3 or HxWx1 images (H, W ≥ 2), got {image.dtype} '
                     f'{image.shape}.')
  if image.shape[2] == 1:
    colour = [k for k in ('hed_sigma', 'hed_bias', 'saturation', 'hue') if _get(params, k, 0)]
    if colour:
      raise ValueError(f'augmentation {colour} needs RGB images; the input is grayscale '
                       '(set them to 0 in config.data.augment).')
    out, mask = augment(np.repeat(image, 3, axis=2), mask, params, seed=seed, epoch=epoch,
                        index=index)
    return out[..., :1], mask
  if mask is not None and mask.shape != image.shape[:2]:
    raise ValueError(f'mask shape {mask.shape} does not match image {image.shape[:2]}.')
  _keep_freed_memory()
  rng = np.random.default_rng([int(seed), int(epoch), int(index)])
  crop = _get(params, 'crop_size')
  out_hw = image.shape[:2] if crop is None else tuple(int(v) for v in np.broadcast_to(crop, 2))
  sy, sx, exact = _source_coords(rng, params, image.shape[:2], out_hw)
  f, mask = _sample(image, mask, sy, sx, exact)

  hed = (_get(params, 'hed_sigma', 0) or _get(params, 'hed_bias', 0)) and (
      rng.random() < _get(params, 'p_hed', 1.0))
  if exact and not (hed or any(_get(params, k, 0) for k in _PHOTOMETRIC)):
    # flips/rot90/crop only: no float round trip
    return _finish(f.reshape(out_hw + (-1,)), mask, params, seed=seed, epoch=epoch,
                   index=index)
  if exact:
    f = np.ascontiguousarray(f.T, dtype=np.float32)
  if hed:
    f = _hed_jitter(rng, params, f)
  colour = _colour_matrix(rng, params, f)
  if colour is not None:
    f = colour[0].T @ f + colour[1][:, None]
  f = f.reshape((-1,) + out_hw)
  if _fires(rng, params, 'blur_sigma'):
    sigma = rng.uniform(*_span(params['blur_sigma'], symmetric=False))
    f = ndimage.gaussian_filter(f, (0, sigma, sigma), mode='reflect', truncate=3.0)
  if _fires(rng, params, 'noise_std'):
    std = rng.uniform(*_span(params['noise_std'], symmetric=False))
    f += np.float32(std) * _noise(rng, f.size).reshape(f.shape)
  np.clip(f, 0, 255, out=f)
  f += 0.5  # truncation below then rounds to nearest
  out = np.empty(out_hw + (3,), np.uint8)
  for c in range(3):  # ~3x faster than a transposing copy
    out[..., c] = f[c]
  return _finish(out, mask, params, seed=seed, epoch=epoch, index=index)


def _finish(image, mask, params, **key):
  """What the slide adds last: glass at a cut edge, then the scanner's JPEG."""
  image, mask = glass_edge(image, mask, params, **key)
  return jpeg(image, params, **key), mask


def glass_edge(image, mask, params, *, seed, epoch, index):
  """With probability p_glass_edge, one side of the crop becomes glass: a band up to
  `glass_edge` of the crop deep (x1.5 at a wave's crest) with a wavy inner edge, filled with
  near-white (a tint and a little noise drawn per crop) and labelled background (0). Teaches a
  model trained on crops cut from inside tissue what a tissue edge on a slide looks like:
  without it, glass next to tissue reads like a gland's lumen. Its own random stream: the
  other draws are unchanged."""
  depth = _get(params, 'glass_edge', 0)
  rng = np.random.default_rng([int(seed), int(epoch), int(index), 1])
  if not depth or not rng.random() < _get(params, 'p_glass_edge', 1.0):
    return image, mask
  image = np.rot90(image, k := int(rng.integers(4))).copy()  # the band on the top side
  mask = None if mask is None else np.rot90(mask, k).copy()
  height, width = image.shape[:2]
  along = np.arange(width)
  base = rng.uniform(min(0.05, depth), depth) * height
  waves = sum(rng.uniform(0.05, 0.25) * base * np.sin(2 * np.pi * along / rng.uniform(
      0.3, 2.0) / width + rng.uniform(0, 2 * np.pi)) for _ in range(2))
  edge = np.clip(base + waves, 1, height).astype(np.int64)  # the whole side is glass
  glass = np.arange(height)[:, None] < edge[None, :]
  tint = rng.uniform(228, 250) + rng.uniform(-4, 4, 3)
  values = tint + rng.normal(0, 2.0, (int(glass.sum()), 3))
  image[glass] = np.clip(values + 0.5, 0, 255).astype(np.uint8)[:, :image.shape[2]]
  if mask is not None:
    mask[glass] = 0
  return np.rot90(image, -k).copy(), None if mask is None else np.rot90(mask, -k).copy()


def jpeg(image, params, *, seed, epoch, index):
  """With probability p_jpeg_quality, a JPEG round trip at a quality drawn from jpeg_quality
  (lo, hi), with 4:2:0 chroma as slide scanners write it. The model then reads slides' JPEG
  tiles as it reads PNGs: q90 otherwise turns pale mucin into what it calls background
  (BENCHMARKS.md, issue 15). Its own random stream: the other draws are unchanged."""
  quality = _get(params, 'jpeg_quality', 0)
  if not np.any(quality):
    return image
  bounds = [quality] * 2 if np.ndim(quality) == 0 else list(quality)
  if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1] <= 100:
    raise ValueError('data.augment.jpeg_quality must be (lo, hi) with 1 <= lo <= hi <= 100, '
                     f'or (0, 0) for off; got {quality!r}.')
  rng = np.random.default_rng([int(seed), int(epoch), int(index), 2])
  if not rng.random() < _get(params, 'p_jpeg_quality', 1.0):
    return image
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(
      buffer, format='JPEG', quality=int(rng.integers(int(bounds[0]), int(bounds[1]) + 1)),
      subsampling=2)
  return np.array(Image.open(buffer)).reshape(image.shape)  # writable, like every other path
