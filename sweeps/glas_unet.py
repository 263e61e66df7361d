r"""The GlaS U-Net: learning rate, width and the BCE/Dice balance.

Command:  python launch.py --mode=sweep --config=configs/warwick_unet.py:cpu \
            --sweep=sweeps/glas_unet.py --workdir=W
Smoke:    python launch.py --mode=sweep --config=configs/warwick_unet.py:smoke \
            --sweep=sweeps/glas_unet.py:smoke --workdir=/tmp/glas_sweep_smoke

Space: Adam's learning rate log-uniform in [3e-4, 3e-3]; model.base_width (the top level's
channels, doubled at each of the 4 levels below) in {8, 16, 24, 32} (16 is the :cpu recipe's
U-Net, 64 the GPU recipe's); dice_weight (loss = BCE + dice_weight * soft Dice) in [0.25, 4],
log-uniform. Metric: final_val/dice (pooled pixel Dice of the selected checkpoint), maximised.
TPE; Hyperband pruning on val/dice. Trial 0: the config's own values (base_width 0, i.e. its
`features`, is not in the space: enqueued explicitly at 16 for :cpu).
Time: each :cpu trial is up to ~0.8 core-hours; not run on this 2-core machine yet.
"""
import ml_collections

from configs import common
from histojax.sweep_spec import categorical, log_uniform


def get_sweep(arg=None):
  arg = common.parse_arg(arg, smoke=False, trials=12)
  s = ml_collections.ConfigDict()
  s.space = (log_uniform('optimizer.lr', 3e-4, 3e-3),
             categorical('model.base_width', (8, 16, 24, 32)),
             log_uniform('dice_weight', 0.25, 4.0))
  s.metric = 'final_val/dice'
  s.num_trials = arg.trials
  s.sampler = 'tpe'
  s.pruner = dict(name='hyperband', reduction_factor=3)
  s.enqueue = (dict(**{'optimizer.lr': 1e-3, 'model.base_width': 16, 'dice_weight': 1.0}),)
  if arg.smoke:
    s.num_trials = 2
    s.space = (log_uniform('optimizer.lr', 3e-4, 3e-3), categorical('model.base_width', (4, 8)),
               log_uniform('dice_weight', 0.25, 4.0))
    s.enqueue = ()
  return s
