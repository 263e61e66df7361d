"""Attribution maps for a classifier: occlusion and integrated gradients (figures:
histojax/plots.py attribution_overlay).

`apply_fn` maps normalised float32 images [N, H, W, C] to logits [N, K], with the parameters
already bound (e.g. functools.partial(model.apply, variables)). Compiled programs are cached
on the identity of `apply_fn`, so reuse one object across images to compile once.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from histojax import inference


def _score(apply_fn, x, target, score):
  logits = apply_fn(x)
  if score == 'prob':
    logits = jax.nn.softmax(logits, -1)
  return logits[:, target]


@functools.partial(jax.jit, static_argnames=('apply_fn', 'window', 'score'))
def _occlude_batch(apply_fn, image, baseline, target, corners, valid, reference, *, window,
                   score):
  """Score drops for a fixed-size batch of windows, spread back over the pixels they cover."""
  h, w = image.shape[:2]
  rows, cols = jnp.arange(h), jnp.arange(w)

  def mask(corner):
    r = (rows >= corner[0]) & (rows < corner[0] + window)
    c = (cols >= corner[1]) & (cols < corner[1] + window)
    return r[:, None] & c[None, :]

  masks = jax.vmap(mask)(corners) & valid[:, None, None]
  occluded = jnp.where(masks[..., None], baseline, image)
  drop = reference - _score(apply_fn, occluded, target, score)
  return jnp.einsum('bhw,b->hw', masks.astype(drop.dtype), drop), masks.sum(0)


def occlusion(apply_fn, image, target, window=16, stride=8, baseline=0.0, batch=64,
              score='logit'):
  """Heatmap [H, W]: mean drop in the target score over the windows covering each pixel.

  A `window`² patch set to `baseline` (a scalar or an array broadcastable to the image;
  0 in normalised space is the dataset mean) slides with `stride`. The score is the target
  logit by default: unlike the softmax probability it does not saturate and does not mix in
  the other classes, so drops add up across regions; score='prob' uses the probability.
  Positive values mark evidence for the target class.
  """
  image = jnp.asarray(image, jnp.float32)
  h, w = image.shape[:2]
  window = min(window, h, w)
  corners = np.array([(r, c) for r in inference.axis_starts(h, window, stride)
                      for c in inference.axis_starts(w, window, stride)], np.int32)
  n = len(corners)
  batch = min(batch, n)
  # Pad to whole batches so every call has the same shape and compiles once.
  pad = -n % batch
  corners = np.concatenate([corners, np.zeros((pad, 2), np.int32)])
  valid = np.arange(n + pad) < n
  baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), image.shape)
  target = jnp.asarray(target, jnp.int32)
  reference = _score(apply_fn, image[None], target, score)[0]
  total = jnp.zeros((h, w), jnp.float32)
  count = jnp.zeros((h, w), jnp.int32)
  for i in range(0, n + pad, batch):
    s, c = _occlude_batch(apply_fn, image, baseline, target, corners[i:i + batch],
                          valid[i:i + batch], reference, window=window, score=score)
    total, count = total + s, count + c
  return np.asarray(total / jnp.maximum(count, 1))


@functools.partial(jax.jit, static_argnames=('apply_fn', 'steps', 'batch'))
def _integrated_gradients(apply_fn, image, baseline, target, *, steps, batch):
  def target_logit(x):
    return apply_fn(x[None])[0, target]

  alphas = jnp.linspace(0.0, 1.0, steps + 1)
  # lax.map with batch_size vmaps over chunks of the path, bounding memory for big models.
  grads = jax.lax.map(lambda a: jax.grad(target_logit)(baseline + a * (image - baseline)),
                      alphas, batch_size=batch)
  # Trapezoid rule: end points weigh half.
  weights = jnp.full((steps + 1,), 1.0 / steps).at[jnp.array([0, steps])].mul(0.5)
  return (image - baseline) * jnp.tensordot(weights, grads, axes=1)


def integrated_gradients(apply_fn, image, target, baseline=None, steps=32, batch=None):
  """Attributions [H, W, C] of the target logit along the straight path baseline → image.

  The path integral of the gradient uses the trapezoid rule on steps + 1 points, evaluated
  `batch` points at a time (all at once by default). baseline defaults to zeros, i.e. the
  dataset mean for normalised inputs. Check with `completeness`.
  """
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  image = jnp.asarray(image, jnp.float32)
  baseline = (jnp.zeros_like(image) if baseline is None
              else jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), image.shape))
  return np.asarray(_integrated_gradients(
      apply_fn, image, baseline, jnp.asarray(target, jnp.int32), steps=steps,
      batch=batch or steps + 1))


def completeness(apply_fn, image, target, attributions, baseline=None):
  """(sum of attributions, f(image) − f(baseline), relative error) for the target logit.

  IG's completeness axiom says the first two agree; a large relative error means too few
  steps for how curved the model is along the path.
  """
  image = jnp.asarray(image, jnp.float32)
  baseline = (jnp.zeros_like(image) if baseline is None
              else jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), image.shape))
  logits = apply_fn(jnp.stack([image, baseline]))[:, target]
  delta = float(logits[0] - logits[1])
  total = float(np.sum(attributions))
  return total, delta, abs(total - delta) / max(abs(delta), 1e-12)
