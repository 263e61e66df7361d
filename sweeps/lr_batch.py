r"""The seed's search for its nucleus classifier (Ray Tune there): learning rate x batch size.

Command:  python launch.py --mode=sweep --config=configs/nuclei_resnet18.py:cpu \
            --sweep=sweeps/lr_batch.py --workdir=W
Smoke:    python launch.py --mode=sweep --config=configs/mnist_cnn.py:smoke \
            --sweep=sweeps/lr_batch.py:smoke --workdir=/tmp/sweep_smoke   (3 trials, ~1 min)

Space: Adam's learning rate log-uniform in [1e-4, 1e-2], batch size in {32, 64, 128, 256}.
Metric: the config's best_metric of the selected checkpoint (final_val/accuracy for MNIST,
final_val/weighted_f1 for the nucleus classifiers; `:metric=final_val/<m>` for another),
maximised. TPE sampler; median pruner (after 3 complete trials, a trial whose val metric at
an evaluation is below the median of earlier trials' at the same epoch stops).
Trial 0 runs the config's own values: the baseline the sweep is compared with.
Expected / Time: BENCHMARKS.md (MNIST :cpu at 3 epochs, 16 trials, about 2 core-hours).
"""
import ml_collections

from configs import common
from histojax.sweep_spec import categorical, log_uniform


def get_sweep(arg=None):
  arg = common.parse_arg(arg, smoke=False, trials=16, metric='')
  s = ml_collections.ConfigDict()
  s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2),
             categorical('batch_size', (32, 64, 128, 256)))
  s.metric = arg.metric
  s.num_trials = arg.trials
  s.sampler = 'tpe'
  s.pruner = dict(name='median', startup_trials=3)
  s.enqueue_defaults = True
  if arg.smoke:
    s.num_trials = 3
    s.space = (log_uniform('optimizer.lr', 1e-4, 1e-2), categorical('batch_size', (8, 16)))
    s.pruner = dict(name='none')  # all 3 complete: every figure is drawn
  return s
