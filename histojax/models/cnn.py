"""Small configurable CNN: conv(3x3)+BN+ReLU blocks, max-pools, Dense head."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from histojax.models import layers

he_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')  # torch kaiming_normal_


class CNN(nn.Module):
  num_classes: int
  features: Sequence[int] = (32, 64, 128, 128, 256)
  pool_after: Sequence[int] = (1, 3)   # indices of conv layers followed by 2x2 max-pool
  dense: int = 256
  dropout: float = 0.25
  batch_norm: bool = True
  pooling: str = 'flatten'             # 'flatten' (the original project's) | 'gap' (global average)
  dtype: jnp.dtype = jnp.float32       # compute dtype; params and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = nn.Conv(width, (3, 3), padding=1, kernel_init=he_init, dtype=self.dtype)(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype)(x)
      x = nn.relu(x)
      if i in self.pool_after:
        x = layers.max_pool_2x2(x)
    x = x.mean(axis=(1, 2)) if self.pooling == 'gap' else x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense, kernel_init=he_init, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
