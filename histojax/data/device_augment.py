"""Augmentations that run inside the jitted step, drawn from the step's RNG (resume-exact)."""
import jax
import jax.numpy as jnp


def random_affine(rng, images, max_shift=2.0, max_rotate_deg=10.0):
  """Per-example random rotation and translation, bilinear, zero fill. images: [B,H,W,C]."""
  b, h, w, _ = images.shape
  k_rot, k_shift = jax.random.split(rng)
  theta = jnp.deg2rad(max_rotate_deg) * jax.random.uniform(k_rot, (b,), minval=-1, maxval=1)
  shift = max_shift * jax.random.uniform(k_shift, (b, 2), minval=-1, maxval=1)
  yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing='ij')

  def warp(image, angle, dyx):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_y = cos * yy - sin * xx + (h - 1) / 2 - dyx[0]
    src_x = sin * yy + cos * xx + (w - 1) / 2 - dyx[1]
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [src_y, src_x], order=1, mode='constant', cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(warp)(images, theta, shift)
