"""Classic U-Net (Ronneberger et al. 2015) with padded convs, BatchNorm and transposed-conv
upsampling; the same layout as the PyTorch peer (shared/peer/peer_torch.py, class UNet)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from histojax.models import layers
from histojax.models.cnn import he_init


class ConvBlock(nn.Module):
  """Two (3x3 conv without bias → BatchNorm → ReLU)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=he_init,
                  dtype=self.dtype)(x)
      x = layers.batch_norm(train, self.dtype)(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net over NHWC images → per-pixel logits [N, H, W, num_classes] (float32).

  `features` are the block widths from the top level to the bottleneck; there are
  len(features) - 1 pooling levels, so H and W must be divisible by 2**(len(features) - 1).
  `base_width` > 0 replaces the widths by base_width * (1, 2, 4, ...), as many levels as
  `features` has: one integer that a sweep can search (Optuna cannot sample tuples).
  """
  num_classes: int = 1                  # 1: a single binary-segmentation logit
  features: Sequence[int] = (64, 128, 256, 512, 1024)
  base_width: int = 0                   # 0: `features` as given
  dropout: float = 0.0                  # applied to the bottleneck output
  dtype: jnp.dtype = jnp.float32        # compute dtype; params and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = (tuple(self.base_width * 2**i for i in range(len(self.features)))
                if self.base_width > 0 else tuple(self.features))
    depth = len(features) - 1
    if x.ndim != 4 or x.shape[1] % 2**depth or x.shape[2] % 2**depth:
      raise ValueError(f'UNet with {depth} pooling levels needs NHWC input with H and W '
                       f'divisible by {2**depth}; got shape {tuple(x.shape)}.')
    x = x.astype(self.dtype)
    skips = []
    for i, width in enumerate(features):
      x = ConvBlock(width, dtype=self.dtype, name=f'down_{i}')(x, train)
      if i < depth:
        skips.append(x)
        x = layers.max_pool_2x2(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i, width in enumerate(reversed(features[:-1])):
      # torch's ConvTranspose2d default keeps its bias; so do we, for a like-for-like peer.
      x = layers.ConvTranspose2x2(width, kernel_init=he_init, dtype=self.dtype,
                                  name=f'upconv_{i}')(x)
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = ConvBlock(width, dtype=self.dtype, name=f'up_{i}')(x, train)
    x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
