"""Shared config pieces: argument parsing, defaults every task starts from, `:smoke`.

Config-argument grammar (after the colon in `--config=configs/x.py:ARG`): a comma-separated
list of tokens. `name=value` sets an argument; a bare `name` sets it to True. Unknown argument
names are an error. Example: `--config=configs/mnist_cnn.py:smoke,aug`.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def parse_arg(arg, **defaults):
  """Parses 'a,b=3' into a ConfigDict over `defaults` (types follow the defaults)."""
  parsed = ml_collections.ConfigDict(dict(defaults))
  for token in filter(None, (arg or '').split(',')):
    name, _, value = token.partition('=')
    if name not in defaults:
      raise ValueError(f'Unknown config argument {name!r}; known: {sorted(defaults)}')
    default = defaults[name]
    if not value:
      parsed[name] = True
    elif isinstance(default, bool):
      parsed[name] = value.lower() in ('1', 'true', 'yes')
    else:
      parsed[name] = type(default)(value) if default is not None else value
  return parsed


def set_folds(c, arg):
  """Config arguments `folds=K,fold=I`: group k-fold cross-validation, this run tests fold I."""
  c.data.folds, c.data.fold = arg.folds, arg.fold
  if arg.folds and not 0 <= arg.fold < arg.folds:
    raise ValueError(f'Config argument fold={arg.fold} must be in 0..folds-1={arg.folds - 1}.')
  return c


def base_config():
  """Every config key the code reads, with its one default; task configs override what they
  need (tests/test_configs.py fails when library code reads a key that is not here)."""
  c = ml_collections.ConfigDict()
  c.task = ''                      # histojax.tasks.<task>: classification | segmentation
  c.dataset = ''                   # histojax/data/datasets.py builder, e.g. glas, mnist
  c.num_classes = placeholder(int)  # dataset folder_seg: classes, background included
  c.seed = 0
  c.dtype = 'float32'              # compute dtype: float32 | bfloat16 (params stay float32)
  c.batch_size = 64                # global batch, over all devices and hosts
  c.eval_batch_size = 1024
  # Durations: `<name>_steps` or `<name>_epochs`; steps win when both are set, so
  # `--config.total_steps=N` overrides a config written in epochs. Typed placeholders (None
  # until set) so that the command line can set them.
  c.total_steps = placeholder(int)
  c.total_epochs = placeholder(float)
  c.log_every_steps = 100
  c.eval_every_steps = placeholder(int)
  c.eval_every_epochs = 1.0
  c.ckpt_every_steps = placeholder(int)
  c.ckpt_every_epochs = 1.0
  c.ckpt_keep = 2                  # newest checkpoints kept besides the best (a damaged newest
                                   # one falls back to the one before it)
  c.init_from = placeholder(str)   # transfer learning: a workdir, checkpoint or .npz
  # With init_from: train only these top-level modules for `steps` steps, then everything.
  c.freeze = ml_collections.ConfigDict(dict(head=('head',), steps=0))
  # Keras-style kernel_/bias_regularizer: l2 * sum(w**2) of conv/dense layers added to the loss.
  c.l2_kernel = 0.0
  c.l2_bias = 0.0
  c.label_smoothing = 0.0          # classification: training targets (1-a)*onehot + a/classes
  # Model selection and early stopping on a validation metric.
  c.best_metric = 'val/accuracy'
  c.best_mode = 'max'              # max | min
  c.early_stopping_patience = 0    # in evaluations; 0 turns it off
  # The final report scores the test parts (False: validation only; sweep trials, whose sweep
  # scores its best trial's test parts once, at its end).
  c.final_test = True
  c.optimizer = ml_collections.ConfigDict(dict(name='adam', lr=1e-3, weight_decay=0.0,
                                               momentum=0.9))  # momentum: sgd only
  c.schedule = ml_collections.ConfigDict(dict(
      name='constant',             # constant | step | cosine
      decay_every_epochs=placeholder(float), decay_every_steps=placeholder(int),
      decay_factor=0.1,
      warmup_steps=0))
  # Segmentation: loss and metrics. loss '': 'bce+dice' for binary masks, 'ce+dice' else.
  c.loss = ''                      # bce | ce | dice or a sum such as 'bce+dice'
  c.dice_weight = 1.0              # the Dice term's weight in a sum ('bce+dice': BCE + w * Dice)
  c.dice_over = 'image'            # soft Dice per image | per global 'batch' (rare classes)
  c.class_weights = placeholder(tuple)  # CE/BCE weight per class, background first
  c.ignore_empty = True            # a class absent from an image's truth: skipped (MONAI)
  c.report_panels = 4              # test images shown as image | truth | prediction | overlay
  # Post-processing, chosen on val among the candidates (histojax/tasks/segmentation.py).
  c.object_min_size = 0            # GlaS objects: predicted components below it (px) dropped
  c.object_min_size_candidates = placeholder(tuple)
  c.detection_radius = 6.0         # nucleus detection: a match within this distance (px)
  c.detection_split = 0            # nucleus centres: 0 centroids, d distance-map maxima d px apart
  c.detection_split_candidates = placeholder(tuple)
  # Whole-image sliding-window inference (segmentation evaluation and predict).
  c.inference = ml_collections.ConfigDict(dict(
      window=(256, 256), overlap=0.5, blend='gaussian', window_batch=8,
      tta='none',                  # tta: none | flips | dihedral
      slide_tile=2048))            # whole slides: tiles of this many model px a side
  # Classification: attribution figures in the report for these test examples, or else for
  # explain_samples random (seeded) ones.
  c.explain_samples = 0
  c.explain_indices = placeholder(tuple)

  c.data = ml_collections.ConfigDict()
  # Grain worker processes for the training stream: 'auto' (none on <= 2 CPUs, else half of
  # them, at most 8: histojax/data/pipeline.py resolve_workers) or a count, as a string
  # ('2'; the field's type is its default's).
  c.data.workers = 'auto'
  c.data.mean = (0.5, 0.5, 0.5)    # inputs: (x / 255 - mean) / std per channel
  c.data.std = (0.25, 0.25, 0.25)
  c.data.augment = None            # host-side augmentation (histojax/data/augment.py), a dict
  c.data.device_augment = None     # in the jitted step: dict(max_shift=..., max_rotate_deg=...)
  c.data.crop_size = 256           # segmentation: training crops (px, at data.scale)
  c.data.repeats_per_epoch = 1     # an "epoch" visits each training example this many times
  c.data.cache_train = True        # derived training data kept under HISTOJAX_CACHE
  c.data.val_size = 5000           # mnist: validation images held out of the training set
  c.data.val_fraction = 0.2        # glas: validation share of the training patients
  # Datasets split by group (image, patient): fractions of groups per part.
  c.data.fractions = ml_collections.ConfigDict(dict(train=0.7, val=0.1, test=0.2))
  c.data.radius = 5.0              # nuclei from points: disc radius (px)
  c.data.types = False             # nuclei: one class per nucleus type (else nucleus vs not)
  c.data.merge = None              # nucleus types merged, e.g. dict(others='fibroblast')
  c.data.ignore_untyped = False    # types: nuclei without a type drawn as ignore
  c.data.patch_size = 100          # nucleus-centred crops (px)
  c.data.channels = 3              # CSV patch layout: 1 for grayscale
  c.data.csv = placeholder(str)    # CSV patch layout: the labels file and the image folder
  c.data.images = placeholder(str)
  c.data.tile_size = 100           # whole images tiled into tile_size² patches
  c.data.tile_stride = placeholder(int)  # None: tile_size (no overlap)
  c.data.min_tissue = 0.5          # tiles with less tissue than this fraction are dropped
  c.data.slide_region = 1024       # segmentation from annotated slides: regions (px at data.mpp)
  c.data.slide_mpp = 0.0           # training slides whose metadata has no pixel size: theirs
  c.data.max_train_examples = placeholder(int)  # subset for smoke runs
  c.data.max_eval_examples = placeholder(int)
  c.data.max_source_images = placeholder(int)
  c.data.center_crop = 0           # classification: the model sees the centre NxN (0: all)
  c.data.scale = 1.0               # working resolution (0.5: half): segmentation scores at 1.0;
                                   # tile datasets tile the image downsampled by it
  c.data.root = placeholder(str)   # bring-your-own data folder
  # µm per pixel of the training images (before data.scale); slide prediction reads slides at
  # data.mpp / data.scale. 0: unknown (slides then need --config.data.mpp=...).
  c.data.mpp = 0.0
  # Class names in label order, e.g. ('A', 'B'): the class folders to use, the labels a CSV may
  # hold (any other label is an error), the nucleus types to keep. None: inferred / all.
  # On the command line: --config.data.classes='("A","B")' (or A,B: split into names).
  c.data.classes = placeholder(tuple)
  c.data.skip_bad = False          # True: warn, skip and count unreadable inputs
  c.data.allow_leakage = False     # True: item-level random split (leaks; warns and says so)
  c.data.tfds_data_dir = placeholder(str)
  # Group k-fold cross-validation for datasets split by data.fractions: the test split is fold
  # `fold` of `folds` group-disjoint folds (0 = off); `python -m histojax.folds` summarises.
  c.data.folds = 0
  c.data.fold = 0
  c.model = ml_collections.ConfigDict(dict(name=''))  # histojax/models: name and its kwargs
  # The config argument sized for 2 CPU cores, e.g. 'configs/mnist_cnn.py:cpu': named (with a
  # time estimate) when a GPU-sized recipe starts on a CPU backend; '' in the :cpu recipes.
  c.cpu_recipe = ''
  c.smoke = False                  # set by smoke(): the report carries a SMOKE banner
  c.mesh = [('data', -1)]
  c.distributed = False            # call jax.distributed.initialize() (multi-host)
  return c


def smoke(c):
  """Shrinks any config so that it runs end to end on CPU in well under a minute."""
  c.smoke = True
  c.cpu_recipe = ''  # a smoke run is no GPU recipe: no CPU time estimate
  c.total_steps, c.total_epochs = 20, None
  c.batch_size = 16
  c.eval_batch_size = 64
  c.log_every_steps = 5
  c.eval_every_steps, c.eval_every_epochs = 10, None
  c.ckpt_every_steps, c.ckpt_every_epochs = 10, None
  c.data.max_train_examples = 512
  c.data.max_eval_examples = 200
  c.data.max_source_images = 24   # derived H&E datasets: built from a spread of 24 images
  c.data.workers = 'auto'
  return c


def smoke_segmentation(c):
  """`smoke` plus what whole-image segmentation needs: tiny U-Net, small crops and windows."""
  smoke(c)
  c.batch_size, c.eval_batch_size = 4, 4
  c.total_steps, c.eval_every_steps, c.ckpt_every_steps = 6, 6, 6
  c.data.max_eval_examples = 2
  c.data.crop_size = 64
  c.model.features = (4, 8, 16)
  c.dtype = 'float32'
  c.inference.update(window=(128, 128), overlap=0.25, blend='gaussian', window_batch=8,
                     tta='none')
  return c
