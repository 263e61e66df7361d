"""PyTorch twins of the `:cpu` recipes' models, timed by the peer's own harness.

  V/bin/python benchmarks/torch_twins.py --benches=mnist_cnn_cpu_b128 [--modes=...] [--steps=10]

Adds benches to `../shared/peer/peer_torch_cpu.py`'s table (read-only there; imported as it is)
and runs its `main()`, so the timing, modes and output lines are the peer's. Layer for layer:
- mnist_cnn_cpu_b128: configs/mnist_cnn.py:cpu, 3x3 conv (bias) + BN + ReLU 32-32-64-64, 2x2
  max-pool after the 2nd and 4th, Dense 128 + ReLU, dropout 0.25, Dense 10; batch 128.
  (histojax's step also draws its random shift/rotation augmentation; the twin's does not.)
- warwick_unet_cpu_b8: configs/warwick_unet.py:cpu, the classic U-Net 16→256 on 192² crops,
  batch 8 (the working resolution is half, so a crop covers 384 px of the original).
- crchisto_unet_cpu_b8: configs/crchisto_nuclei_unet.py:cpu, the same U-Net on 128² crops,
  batch 8 (the shapes of the peer's unet16_128_b8).
- nuclei_resnet18_cpu_b64: configs/nuclei_resnet18.py:cpu, the peer's ResNet18 with the
  ImageNet stem on the centre 72² of the crops, batch 64 (histojax's step receives the 100²
  crops and slices the centre itself).
- patches_cnn_cpu_b64: configs/patches_cnn.py:cpu, 3x3 conv (bias) + BN + ReLU
  32-32-64-64-128-128, 2x2 max-pool after the 1st, 2nd, 4th and 6th, global average pool,
  Dense 256 + ReLU, dropout 0.5, Dense 2; 96² tiles, batch 64.
"""
import os
import sys

import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                'shared', 'peer'))
import peer_torch_cpu as peer  # pylint: disable=g-import-not-at-top,wrong-import-position


class CNN(nn.Module):
  """histojax.models.cnn.CNN; pooling 'flatten' or 'gap' (global average)."""

  def __init__(self, features=(32, 32, 64, 64), pool_after=(1, 3), dense=128, side=28,
               in_channels=1, num_classes=10, dropout=0.25, pooling='flatten'):
    super().__init__()
    layers, c = [], in_channels
    for i, width in enumerate(features):
      layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
      if i in pool_after:
        layers.append(nn.MaxPool2d(2))
        side //= 2
      c = width
    self.features = nn.Sequential(*layers)
    pool = [nn.AdaptiveAvgPool2d(1)] if pooling == 'gap' else []
    flat = c if pooling == 'gap' else c * side * side
    self.fc = nn.Sequential(*pool, nn.Flatten(), nn.Linear(flat, dense), nn.ReLU(),
                            nn.Dropout(dropout), nn.Linear(dense, num_classes))

  def forward(self, x):
    return self.fc(self.features(x))


TWINS = {
    'mnist_cnn_cpu_b128': (CNN, (128, 1, 28, 28), 'class10'),
    'warwick_unet_cpu_b8': (lambda: peer.UNet(widths=(16, 32, 64, 128, 256)), (8, 3, 192, 192),
                            'mask'),
    'crchisto_unet_cpu_b8': (lambda: peer.UNet(widths=(16, 32, 64, 128, 256)),
                             (8, 3, 128, 128), 'mask'),
    'nuclei_resnet18_cpu_b64': (lambda: peer.ResNet18(4, 'imagenet'), (64, 3, 72, 72),
                                'class4'),
    'patches_cnn_cpu_b64': (lambda: CNN((32, 32, 64, 64, 128, 128), (0, 1, 3, 5), 256, 96, 3,
                                        2, 0.5, 'gap'), (64, 3, 96, 96), 'class2'),
}

if __name__ == '__main__':
  peer.BENCHES.update(TWINS)
  peer.main()
