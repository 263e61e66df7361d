r"""Whole images of two classes → 100x100 tiles → binary patch classifier with a bias check
(original project: 8 whole H&E images, 90:10 split; model 1 = A vs B, model 2 = C vs D).

Command:  python launch.py --config=configs/patches_cnn.py --workdir=workdirs/patches
          (default: GlaS benign vs malignant images from Grade.csv, split by patient)
The original project's layout (folders A, B, C, D under DIR, one image per file):
          python launch.py --config=configs/patches_cnn.py:root=DIR,classes=A+B --workdir=W1
          python launch.py --config=configs/patches_cnn.py:root=DIR,classes=C+D --workdir=W2
Smoke:    python launch.py --config=configs/patches_cnn.py:smoke --workdir=/tmp/p
By patient, 4-fold cross-validation (one test split holds only ~3 of GlaS's 16 patients):
          for i in 0 1 2 3; do python launch.py --config=configs/patches_cnn.py:folds=4,fold=$i \
            --workdir=W/fold$i; done; python -m histojax.folds W/fold0 W/fold1 W/fold2 W/fold3

Tiles with < 50% tissue (Otsu on saturation) are dropped; tiles of one image (GlaS: one
patient) never straddle train/val/test. The report compares accuracy with the majority-class
baseline and says in words when the model has not beaten it.
CPU:      for i in 0 1 2 3; do python launch.py --config=configs/patches_cnn.py:cpu,folds=4,fold=$i \
            --workdir=W/fold$i; done   (0.25x magnification, 96² tiles, scored per image)
Expected: to beat the majority baseline on unseen patients. Measured here, the full 20 epochs
on CPU: test accuracy 0.539 vs baseline 0.505; 4-fold CV by patient: 0.595 ± 0.033 vs 0.638,
balanced accuracy 0.562 ± 0.083; the bias check fires. `:cpu`, 4 folds (2026-12-03): per-image
balanced accuracy 0.769 ± 0.148 (bar 0.85 not reached; BENCHMARKS.md).
Time: 20 epochs of ~2.7k GlaS tiles: about a minute on one GPU, ~20 min on 2 CPU cores;
`:cpu`: 0.70 core-hours for all four folds (31 min wall).
"""
from configs import common, nuclei_cnn
from histojax.data.sources import glas


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False, root='', classes='', leaky=False,
                         folds=0, fold=0, cpu=False)
  c = nuclei_cnn.get_config('smoke' if arg.smoke else None)
  if arg.root:
    c.dataset = 'folder_tiles'
    c.data.root = arg.root
    c.data.mpp = 0.0
    c.data.classes = tuple(arg.classes.split('+')) if arg.classes else None
    c.data.fractions = dict(train=0.8, val=0.1, test=0.1)
  else:
    c.dataset = 'glas_tiles'
    c.data.mpp = glas.MPP
    c.data.fractions = dict(train=0.6, val=0.2, test=0.2)  # 16 patients: whole patients
  c.data.tile_size, c.data.tile_stride, c.data.min_tissue = 100, 100, 0.5
  c.data.allow_leakage = bool(arg.leaky)  # tile-level random split: warns, for comparison
  common.set_folds(c, arg)
  c.best_metric = 'val/balanced_accuracy'
  c.total_epochs = 20
  c.cpu_recipe = '' if arg.cpu else 'configs/patches_cnn.py:cpu'
  if arg.cpu:  # 2 CPU cores: quarter magnification, overlapping tiles, chosen per image
    c.data.scale = 0.25           # a 96 px tile covers 384 px of the original: gland layout
    c.data.tile_size, c.data.tile_stride = 96, 24
    # Patients differ in stain: strong stain jitter on every tile.
    c.data.augment = dict(c.data.augment, hed_sigma=0.2, hed_bias=0.05, p_hed=1.0)
    c.model.features = (32, 32, 64, 64, 128, 128)
    c.model.pool_after = (0, 1, 3, 5)  # the first pool early: 48 px after one conv
    c.batch_size = 64
    c.total_epochs = 30
    c.schedule.warmup_steps = 50
    c.best_metric = 'val/image_balanced_accuracy'
    c.early_stopping_patience = 0
    c.explain_samples = 0
    c.data.workers = '1'
  if arg.smoke:
    common.smoke(c)
  return c
