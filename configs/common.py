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
  """Defaults shared by all tasks; task configs override what they need."""
  c = ml_collections.ConfigDict()
  c.task = ''                      # histojax.tasks.<task>
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
  c.optimizer = ml_collections.ConfigDict(dict(name='adam', lr=1e-3, weight_decay=0.0))
  c.schedule = ml_collections.ConfigDict(dict(
      name='constant',             # constant | step | cosine
      decay_every_epochs=placeholder(float), decay_every_steps=placeholder(int),
      decay_factor=0.1,
      warmup_steps=0))
  c.data = ml_collections.ConfigDict()
  c.data.workers = 0               # grain worker processes for the training stream
  c.data.max_train_examples = placeholder(int)  # subset for smoke runs
  c.data.max_eval_examples = placeholder(int)
  c.data.max_source_images = placeholder(int)
  c.data.center_crop = 0           # classification: the model sees the centre NxN (0: all)
  c.data.scale = 1.0               # working resolution (0.5: half): segmentation scores at 1.0;
                                   # tile datasets tile the image downsampled by it
  c.data.root = placeholder(str)   # bring-your-own data folder
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
  c.model = ml_collections.ConfigDict()
  # The config argument sized for 2 CPU cores, e.g. 'configs/mnist_cnn.py:cpu': named (with a
  # time estimate) when a GPU-sized recipe starts on a CPU backend; '' in the :cpu recipes.
  c.cpu_recipe = ''
  c.mesh = [('data', -1)]
  c.distributed = False            # call jax.distributed.initialize() (multi-host)
  return c


def smoke(c):
  """Shrinks any config so that it runs end to end on CPU in well under a minute."""
  c.total_steps, c.total_epochs = 20, None
  c.batch_size = 16
  c.eval_batch_size = 64
  c.log_every_steps = 5
  c.eval_every_steps, c.eval_every_epochs = 10, None
  c.ckpt_every_steps, c.ckpt_every_epochs = 10, None
  c.data.max_train_examples = 512
  c.data.max_eval_examples = 200
  c.data.max_source_images = 24   # derived H&E datasets: built from a spread of 24 images
  c.data.workers = 0
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
  c.inference = dict(window=(128, 128), overlap=0.25, blend='gaussian', window_batch=8,
                     tta='none')
  return c
