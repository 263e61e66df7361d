r"""Nucleus classification from 100x100 nucleus-centred crops of CRCHistoPhenotypes with
ResNet18 (stem for small inputs), optionally fine-tuned from another run or from torchvision
weights (original project: ResNet18 0.977 accuracy on its Kaggle data; different data and protocol).

Command:  python launch.py --config=configs/nuclei_resnet18.py --workdir=workdirs/nuclei_r18
Transfer: python launch.py --config=configs/nuclei_resnet18.py:imagenet \
            --config.init_from=resnet18.npz --workdir=...   (torchvision weights, see README)
The original project's Kaggle layout: add csv=train.csv,images=train[,gray][,classes=A+B+C] (see
          nuclei_cnn.py); with gray and imagenet, the first conv of the torchvision weights is
          summed over RGB.
Smoke:    python launch.py --config=configs/nuclei_resnet18.py:smoke --workdir=/tmp/nr

Split by source image 70/10/20; bf16; flips/rot90, small rotations, HED jitter; AdamW +
cosine; best checkpoint by val/weighted_f1. A plain ResNet18 reaches weighted F1 0.800
(macro 0.760) on a 70/30 image split in ~1 min on one H100; bar: weighted F1 >= 0.84 with
macro and per-class F1 beside it (published, other protocols: SC-CNN 0.784, RCCNet 0.789).
CPU:      python launch.py --config=configs/nuclei_resnet18.py:cpu --workdir=...
Expected: bar weighted F1 >= 0.84 (a plain ResNet18: 0.800); the full config is not yet run (no
GPU). `:cpu` measured (2 cores, 2026-12-03): test weighted F1 0.797 (macro 0.727), bar not
reached (BENCHMARKS.md).
Time: ~1-2 min on one H100 (30 epochs of 15.8k patches); `:cpu` 1.1 core-hours (35 min wall).
"""
from configs import common, nuclei_cnn


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False, imagenet=False, fp32=False, csv='', images='',
                         gray=False, classes='', folds=0, fold=0, cpu=False)
  c = nuclei_cnn.get_config('smoke' if arg.smoke else None)
  if arg.classes and not arg.csv:
    raise ValueError('config argument classes=... is for the CSV layout (csv=...,images=...).')
  if arg.csv:
    nuclei_cnn.use_label_csv(c, arg.csv, arg.images, arg.gray, arg.classes)
  common.set_folds(c, arg)
  c.model = dict(name='resnet18', stem='imagenet' if arg.imagenet else 'small')
  c.dtype = 'float32' if arg.fp32 else 'bfloat16'
  c.l2_kernel, c.l2_bias = 0.0, 0.0
  c.optimizer.update(name='adamw', lr=1e-3, weight_decay=0.05)
  c.schedule.warmup_steps = 200
  c.total_epochs = 30
  c.init_from = None
  # With init_from: train the new head alone first, then everything.
  c.freeze.update(head=('fc',), steps=0)
  if arg.imagenet:
    c.freeze.steps = 300
    c.data.mean, c.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if arg.gray:  # ImageNet statistics of the luma of R=G=B inputs
      c.data.mean, c.data.std = (0.449,), (0.226,)
  c.cpu_recipe = '' if arg.cpu else 'configs/nuclei_resnet18.py:cpu'
  if arg.cpu:  # 2 CPU cores, <= 1.5 core-hours: the centre 72² (nucleus and neighbours) of each
    # crop through the ImageNet stem (18² after it), fp32, 10 epochs
    # A step at 72² takes half the time of one at 100² (0.71 vs 1.38 s quiet); at 64² it takes
    # 3.7 s (an XLA:CPU slow path; benchmarks/NOTES.md), so not 64.
    c.data.center_crop = 72
    c.model.stem = 'imagenet'
    c.dtype = 'float32'           # bf16 is no faster on this CPU
    c.batch_size = 64
    c.total_steps, c.total_epochs = 2400, None
    c.eval_every_steps, c.eval_every_epochs = 600, None
    c.ckpt_every_steps, c.ckpt_every_epochs = 600, None
    c.label_smoothing = 0.1
    c.explain_samples = 0
    c.data.workers = '1'
  if arg.smoke:
    common.smoke(c)
    c.model.widths = (8, 16, 16, 32)
    c.dtype = 'float32'
    c.schedule.warmup_steps = 0
  return c
