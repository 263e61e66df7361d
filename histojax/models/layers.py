"""Pooling and upsampling written so that their gradients are cheap on XLA:CPU.

`nn.max_pool` is `lax.reduce_window`; on XLA:CPU its gradient materialises int32 index arrays
(iota) the size of the activation and scatters into them: 15% of a U-Net train step at 128²
(benchmarks/NOTES.md). The forms below compute the same forward values; their gradients are
elementwise selects. Where a window holds several equal maxima the gradient is shared among
them instead of given to one (after a ReLU the tied zeros get a zero gradient either way).
"""
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp


def batch_norm(train, dtype, **kwargs):
  """BatchNorm with PyTorch's constants (its momentum 0.1 is flax's 0.9; epsilon 1e-5), as the
  torch peers and torchvision's weights use them."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      **kwargs)


def max_pool_2x2(x):
  """2x2 max-pool with stride 2 over NHWC (H and W even), as a reshape and a max."""
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_2x2 needs even H and W; got shape {tuple(x.shape)}.')
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def max_pool_3x3_s2(x):
  """3x3 max-pool, stride 2, padding 1 (torchvision ResNet's stem), as the max of 9 strided
  slices of the input padded with -inf."""
  n, h, w, c = x.shape
  out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      view = padded[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2, :]
      out = view if out is None else jnp.maximum(out, view)
  return out


class ConvTranspose2x2(nn.Module):
  """`nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID')` with the same
  parameters (kernel [2, 2, in, out], bias [out]) and the same output, as one matmul.

  With a 2x2 kernel and stride 2 the output windows do not overlap: each input pixel writes its
  own 2x2 block. As a matmul, the kernel gradient costs what the forward does; as XLA:CPU's
  transposed convolution it was 30% of a U-Net train step (benchmarks/NOTES.md).
  """
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    kernel = self.param('kernel', self.kernel_init, (2, 2, c, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # lax.conv_transpose (transpose_kernel=False) applies the kernel flipped in space.
    y = jnp.einsum('nhwc,abco->nhawbo', x, kernel[::-1, ::-1])
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias
