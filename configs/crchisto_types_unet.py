r"""Nucleus-type segmentation (background + epithelial, inflammatory, fibroblast, others) from
point annotations on CRCHistoPhenotypes: a per-class disc map, CE + soft Dice.

Command:  python launch.py --config=configs/crchisto_types_unet.py --workdir=workdirs/types
Merged:   python launch.py --config=configs/crchisto_types_unet.py:merge ...  (others→fibroblast)
Smoke:    python launch.py --config=configs/crchisto_types_unet.py:smoke --workdir=/tmp/t

Reports pixel accuracy, per-class Dice/IoU, mIoU, the pixel confusion matrix and per-class
detection F1 (type of each predicted blob = majority label inside it). Split by image.
Expected: no published number for this protocol. Measured here with a narrow U-Net, 1,500 CPU
steps: test mIoU 0.240 (4 types), detection F1 0.724, 'others' never predicted (BENCHMARKS.md);
the full config has not been run yet.
Time: as crchisto_nuclei_unet (40 epochs x 70 steps): minutes on one GPU, hours on 2 CPU cores.
"""
from configs import crchisto_nuclei_unet


def get_config(arg=None):
  arg = ','.join(filter(None, ['types', arg]))
  c = crchisto_nuclei_unet.get_config(arg)
  c.best_metric = 'val/mean_iou'
  return c
