r"""Nucleus segmentation on the BreCaHAD release layout (images/ + groundTruth/*.json with
normalised point annotations): the original project's workflow, disc masks around the nuclei,
U-Net, BCE.

Command:  python launch.py --config=configs/brecahad_unet.py --workdir=workdirs/brecahad
          (data in $HISTOJAX_DATA/brecahad, or --config.data.root=DIR)
Types:    python launch.py --config=configs/brecahad_unet.py:types --workdir=W  (background +
          mitosis, apoptosis, tumor, non_tumor; CE + batch Dice; best by val/mean_iou)
Smoke:    python launch.py --config=configs/brecahad_unet.py:smoke --workdir=/tmp/b
          (needs the release in $HISTOJAX_DATA/brecahad; the tests use a fixture)

Nuclei: the nuclear categories only (tubule/non_tubule points are not nuclei); split by case.
BreCaHAD is not available here: this config is smoke-tested on a fixture written in its format
only. Expected: original project's pixel Dice 0.5645 (binary nuclei, the default); untested on the
release.
Time: as crchisto_nuclei_unet per image (162 images of 1360x1024: ~3x the pixels).
"""
from configs import common, crchisto_nuclei_unet


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False, types=False)
  c = crchisto_nuclei_unet.get_config(','.join(
      name for name in ('smoke', 'types') if arg[name]))
  c.dataset = 'brecahad_points'
  c.data.root = None
  c.data.mpp = 0.0  # not recorded here
  c.data.classes = ('mitosis', 'apoptosis', 'tumor', 'non_tumor')
  c.data.merge = None
  c.best_metric = 'val/mean_iou' if arg.types else 'val/dice'
  return c
