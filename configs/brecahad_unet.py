r"""Nucleus-type segmentation on the BreCaHAD release layout (images/ + groundTruth/*.json with
normalised point annotations), the seed's workflow: disc masks, U-Net, CE + Dice.

Command:  python launch.py --config=configs/brecahad_unet.py --workdir=workdirs/brecahad
          (data in $HISTOJAX_DATA/brecahad, or --config.data.root=DIR)
Smoke:    python launch.py --config=configs/brecahad_unet.py:smoke --workdir=/tmp/b

Classes: the nuclear categories (mitosis, apoptosis, tumor, non_tumor); split by case.
BreCaHAD is not available here: this config is smoke-tested on a fixture written in its format
only. Expected: seed Dice 0.5645 (binary); untested on the real release.
Time: as crchisto_nuclei_unet per image (162 images of 1360x1024: ~3x the pixels).
"""
from configs import crchisto_nuclei_unet


def get_config(arg=None):
  c = crchisto_nuclei_unet.get_config(','.join(filter(None, ['types', arg])))
  c.dataset = 'brecahad_points'
  c.data.root = None
  c.data.classes = ('mitosis', 'apoptosis', 'tumor', 'non_tumor')
  c.data.merge = None
  c.best_metric = 'val/mean_iou'
  return c
