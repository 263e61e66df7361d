r"""Nucleus classification (epithelial, inflammatory, fibroblast, others) from 100x100
nucleus-centred crops of CRCHistoPhenotypes with a small CNN (original project: custom CNN 0.921
accuracy on its Kaggle data; different data and protocol).

Command:  python launch.py --config=configs/nuclei_cnn.py --workdir=workdirs/nuclei_cnn
The original project's Kaggle layout (train.csv = filename,label; train/ = 100x100 patches; gray if
grayscale):
          python launch.py --config=configs/nuclei_cnn.py:csv=train.csv,images=train[,gray] ...
          (add classes=A+B+C to refuse any other label in the CSV: typos are not new classes)
          python launch.py --mode=predict --workdir=W --input=test/ --output=OUT
          (OUT/predictions.csv: filename,label,p_<class>..., the original project's submission
          format)
Smoke:    python launch.py --config=configs/nuclei_cnn.py:smoke --workdir=/tmp/nc

22,444 typed nuclei; split by source image 70/10/20 (no image in two splits), stratified by
class. Explicit L2 on kernels and biases (the original project's kernel_/bias_regularizer) as a
loss term.
Report: accuracy, balanced accuracy, macro/weighted F1, per-class P/R/F1, confusion matrix,
predicted vs true class distribution, majority baseline with a bias check.
Expected: weighted F1 below the ResNet18's (a plain ResNet18: 0.800). Measured here: 100 CPU
steps (0.8 epoch), test weighted F1 0.602 (BENCHMARKS.md); 30 epochs not run yet.
Time: 30 epochs of 123 steps: minutes on one GPU; about 20 min per epoch on 2 CPU cores.
"""
from configs import common
from histojax.data import augment
from histojax.data.sources import crchisto


def use_label_csv(c, csv, images, gray, classes=''):
  """The original project's Kaggle layout: equal-size patches in `images`, labels in a
  filename,label CSV;
  `classes` ('A+B+C'): the only labels allowed, in label order (else inferred and logged)."""
  c.dataset = 'csv_patches'
  c.data.mpp = 0.0  # unknown
  c.data.csv, c.data.images = csv, images
  if not images:
    raise ValueError('config argument csv=... needs images=DIR (the folder of patches).')
  if classes:
    c.data.classes = tuple(classes.split('+'))
  c.data.channels = 1 if gray else 3
  if gray:  # no stain or colour jitter on grayscale patches
    c.data.augment = dict(augment.FLIPS_ONLY, rotate_deg=15.0, p_rotate_deg=0.5,
                          brightness=0.1, contrast=0.1)
    c.data.mean, c.data.std = (0.5,), (0.25,)


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False, bf16=False, csv='', images='', gray=False,
                         classes='', folds=0, fold=0)
  c = common.base_config()
  c.task, c.dataset = 'classification', 'crchisto_patches'
  c.data.mpp = crchisto.MPP          # 20x, 0.55 µm/px (the dataset paper; cited there)
  c.data.patch_size = 100
  c.data.fractions = dict(train=0.7, val=0.1, test=0.2)
  c.data.augment = dict(augment.FLIPS_ONLY, rotate_deg=15.0, p_rotate_deg=0.5, hed_sigma=0.05,
                        hed_bias=0.02, p_hed=0.5, brightness=0.1, contrast=0.1)
  c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  if arg.classes and not arg.csv:
    raise ValueError('config argument classes=... is for the CSV layout (csv=...,images=...).')
  if arg.csv:
    use_label_csv(c, arg.csv, arg.images, arg.gray, arg.classes)
  common.set_folds(c, arg)
  c.model = dict(name='cnn', features=(32, 32, 64, 64, 128, 128), pool_after=(1, 3, 5),
                 dense=256, dropout=0.5, batch_norm=True, pooling='gap')
  c.l2_kernel, c.l2_bias = 1e-5, 1e-6
  c.dtype = 'bfloat16' if arg.bf16 else 'float32'
  c.batch_size, c.eval_batch_size = 128, 512
  c.total_epochs = 30
  c.optimizer.update(name='adam', lr=1e-3, weight_decay=0.0)
  c.schedule.name = 'cosine'
  c.best_metric, c.best_mode = 'val/weighted_f1', 'max'
  c.early_stopping_patience = 8
  c.explain_samples = 4  # occlusion + integrated-gradients overlays in the report
  c.explain_indices = ()  # or these test examples, e.g. --config.explain_indices="(3,17)"
  if arg.smoke:
    common.smoke(c)
    c.model.features = (8, 8, 16)
    c.model.pool_after = (0, 2)
    c.model.dense = 16
    c.explain_samples = 1
  return c
