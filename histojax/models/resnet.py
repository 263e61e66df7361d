"""ResNet with BasicBlocks (ResNet18 by default) in torchvision's layout.

Submodule names follow torchvision's state-dict keys with `layerS.B` → `layerS_B` and
`downsample.0/1` → `downsample_0/1`, so `layer1.0.conv1.weight` is
params['layer1_0']['conv1']['kernel'] (see histojax/models/torch_import.py).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from histojax.models import layers

# torchvision initialises ResNet convs with kaiming_normal_(mode='fan_out').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
STEMS = ('imagenet', 'small')


def _bn(train, dtype, name, zero_init=False):
  return layers.batch_norm(
      train, dtype, scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual; 1x1 strided projection when the shape changes."""
  features: int
  strides: int = 1
  zero_init_residual: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda f, k, s, p, name: nn.Conv(f, (k, k), strides=s, padding=p, use_bias=False,
                                            kernel_init=conv_init, dtype=self.dtype, name=name)
    y = conv(self.features, 3, self.strides, 1, 'conv1')(x)
    y = nn.relu(_bn(train, self.dtype, 'bn1')(y))
    y = conv(self.features, 3, 1, 1, 'conv2')(y)
    y = _bn(train, self.dtype, 'bn2', zero_init=self.zero_init_residual)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.strides, 0, 'downsample_0')(x)
      x = _bn(train, self.dtype, 'downsample_1')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet over NHWC images (any channel count) → logits [N, num_classes] (float32).

  stem='imagenet': 7x7/2 conv + 3x3/2 max-pool (torchvision; 224 px inputs, pretrained
  weights). stem='small': one 3x3/1 conv and no pool, keeping resolution for ~100 px tiles.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'small'
  zero_init_residual: bool = False     # torchvision's option: last BN gamma of each block = 0
  dtype: jnp.dtype = jnp.float32       # compute dtype; params and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem not in STEMS:
      raise ValueError(f'Unknown ResNet stem {self.stem!r}; expected one of {STEMS}.')
    x = x.astype(self.dtype)
    big = self.stem == 'imagenet'
    x = nn.Conv(self.widths[0], (7, 7) if big else (3, 3), strides=2 if big else 1,
                padding=3 if big else 1, use_bias=False, kernel_init=conv_init,
                dtype=self.dtype, name='conv1')(x)
    x = nn.relu(_bn(train, self.dtype, 'bn1')(x))
    if big:
      x = layers.max_pool_3x3_s2(x)
    for s, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(blocks):
        x = BasicBlock(width, strides=2 if s > 0 and b == 0 else 1,
                       zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                       name=f'layer{s + 1}_{b}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


def ResNet18(num_classes, **kwargs):  # pylint: disable=invalid-name
  """ResNet18: BasicBlock x [2, 2, 2, 2], widths 64-128-256-512."""
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2), **kwargs)
