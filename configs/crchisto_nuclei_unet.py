r"""Nucleus segmentation from point annotations (discs) on CRCHistoPhenotypes: the original
project's BreCaHAD workflow (U-Net, BCE-with-logits, Adam, batch 8, checkpoint every epoch, best model).

Command:  python launch.py --config=configs/crchisto_nuclei_unet.py --workdir=workdirs/nuclei
Types:    python launch.py --config=configs/crchisto_types_unet.py --workdir=workdirs/types
CPU:      python launch.py --config=configs/crchisto_nuclei_unet.py:cpu \
            --workdir=workdirs/nuclei_cpu
          (2 CPU cores, <= 1.5 core-hours: U-Net 16→256, 128 px crops, 5,000 steps, best
          checkpoint by val detection F1, flip TTA, nucleus centres split on val. Measured:
          test detection F1 0.826 in 4,316 CPU-s = 1.20 core-hours, about 62 min wall; bar 0.80)
Smoke:    python launch.py --config=configs/crchisto_nuclei_unet.py:smoke --workdir=/tmp/n

Masks: a disc of radius 5 px around every annotated nucleus centre (29,830 unique nuclei in
100 images of 500x500); split by image 70/10/20. Reports pooled pixel Dice and detection
precision/recall/F1 (predicted centres matched to annotated centres within 6 px; centres are
blob centroids, or distance-map maxima that split touching nuclei, chosen on val).
Expected: original project's Dice 0.5645 (BreCaHAD). Measured here with a narrow U-Net, 400 CPU
steps: test
pixel Dice 0.551, detection F1 0.638 (BENCHMARKS.md); the full config has not been run yet.
Time: 40 epochs x 70 steps; minutes on one GPU, hours on 2 CPU cores.
"""
from configs import common
from histojax.data import augment
from histojax.data.sources import crchisto


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False, types=False, merge=False, cpu=False)
  c = common.base_config()
  c.task = 'segmentation'
  c.dataset = 'crchisto_points'
  c.data.mpp = crchisto.MPP          # 20x, 0.55 µm/px (the dataset paper; cited there)
  c.data.radius = 5.0
  c.data.types = bool(arg.types)
  # Type maps: ~25% of detected nuclei have no type; scoring them as background would teach
  # the model that nucleus-looking pixels are background.
  c.data.ignore_untyped = bool(arg.types)
  # Optional class merge for the type map (rare 'others' folded into fibroblast/stroma).
  c.data.merge = dict(others='fibroblast') if arg.merge else None
  c.data.fractions = dict(train=0.7, val=0.1, test=0.2)
  c.data.crop_size = 256
  c.data.augment = augment.default_params()
  c.data.repeats_per_epoch = 8
  c.model = dict(name='unet', features=(32, 64, 128, 256, 512), dropout=0.0)
  c.loss = 'ce+dice' if arg.types else 'bce'
  # Batch Dice: with per-image Dice, classes absent from a crop collapse to background.
  c.dice_over = 'batch' if arg.types else 'image'
  c.class_weights = ()  # CE/BCE weight per class, background first; () = unweighted
  c.ignore_empty = True  # class absent from an image's truth: skipped, counted (False: 1 or 0)
  c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  c.report_panels = 4    # test images shown as image | truth | prediction | overlay
  c.batch_size = 8
  c.total_epochs, c.total_steps = 40, None
  c.optimizer.update(name='adam', lr=1e-3, weight_decay=0.0)
  c.schedule.name = 'cosine'
  c.eval_every_epochs = c.ckpt_every_epochs = 1.0
  c.best_metric, c.best_mode = 'val/dice', 'max'
  c.detection_radius = 6.0
  # Nucleus centres: blob centroids (0), or distance-map maxima >= d px apart, which split
  # touching nuclei; the final report chooses among the candidates on val detection F1.
  c.detection_split = 0
  c.detection_split_candidates = () if arg.types else (0, 2, 3, 4, 5)
  c.inference.update(window=(256, 256), overlap=0.25, blend='gaussian', window_batch=8,
                     tta='none')
  c.cpu_recipe = '' if arg.cpu else 'configs/crchisto_nuclei_unet.py:cpu'
  if arg.cpu:  # 2 CPU cores, <= 1.5 core-hours: U-Net 16→256 on 128 px crops, chosen on val F1
    c.model = dict(name='unet', features=(16, 32, 64, 128, 256), dropout=0.0)
    c.data.crop_size = 128
    c.data.workers = '1'
    c.loss = 'bce' if not arg.types else c.loss
    c.total_epochs, c.total_steps = None, 5000
    c.schedule.warmup_steps = 100
    c.eval_every_epochs = c.ckpt_every_epochs = None
    c.eval_every_steps = c.ckpt_every_steps = 500
    if not arg.types:
      c.best_metric = 'val/detection_f1'   # the bar is detection F1: select on it (val only)
    c.inference.update(window=(256, 256), overlap=0.25, blend='gaussian', window_batch=8,
                       tta='flips')
  if arg.smoke:
    common.smoke_segmentation(c)
  return c
