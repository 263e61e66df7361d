"""Orbax checkpoints of train state + data-iterator position + loop state + config.

Kept: the latest checkpoint and the best one by the validation metric (a preservation policy,
not `best_fn` + `max_to_keep`, which can delete the latest). Saves go through orbax's
temporary-path commit, so a killed run never leaves a half-written checkpoint behind.
"""
import pathlib

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpoints:

  def __init__(self, directory, *, best_metric, best_mode):
    self.best_metric = best_metric
    # Ties go to the earlier step, as in the train loop (strict improvement only).
    tie_break = (lambda m: -m['step']) if best_mode == 'max' else (lambda m: m['step'])
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=1),
        policies.BestN(get_metric_fn=lambda m: (m[best_metric], tie_break(m)),
                       reverse=best_mode == 'min', n=1, keep_checkpoints_without_metrics=False),
    ])
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=True),
        item_names=('state', 'loop'))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, loop_state, metrics=None):
    """loop_state: JSON-able dict (data iterator state, best so far, config)."""
    if step in self.manager.all_steps():
      return
    if metrics is not None:
      metrics = ({self.best_metric: metrics[self.best_metric], 'step': step}
                 if self.best_metric in metrics else None)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop_state)),
        metrics=metrics, force=True)

  def restore(self, step, abstract_state):
    """Restores onto the shardings of `abstract_state` (a tree of ShapeDtypeStructs)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
    return restored['state'], restored['loop']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)
