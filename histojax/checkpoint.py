"""Orbax checkpoints of train state + data-iterator position + loop state + config.

Kept: the latest checkpoint and the best one by the validation metric (a preservation policy,
not `best_fn` + `max_to_keep`, which can delete the latest). Saves go through orbax's
temporary-path commit, so a killed run never leaves a half-written checkpoint behind.
"""
import json
import pathlib

import jax
import numpy as np
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


def load_variables(path, in_channels=None):
  """{'params', 'batch_stats'} as numpy from a histojax workdir (its best checkpoint, else the
  latest), a checkpoints/<step> folder, or a torchvision-layout ResNet18 `.npz` (whose first
  conv is summed over RGB when in_channels=1)."""
  path = pathlib.Path(path)
  if path.suffix == '.npz':
    from histojax.models import torch_import  # pylint: disable=g-import-not-at-top
    return torch_import.convert_resnet18(path, in_channels=in_channels, skip_head=True)
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  if path.name == 'checkpoints' or not (path / 'state').is_dir():
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
    if not steps:
      raise FileNotFoundError(f'init_from: no checkpoint under {path}.')
    step = steps[-1]
    best = _best_step(path / str(step))  # the latest checkpoint's loop state names the best
    path = path / str(best if best in steps else step)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path / 'state').item_metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    state = ckptr.restore(path / 'state', target)
  return {'params': jax.tree.map(np.asarray, state['params']),
          'batch_stats': jax.tree.map(np.asarray, state.get('batch_stats', {}))}


def _best_step(step_dir):
  loop = step_dir / 'loop' / 'metadata'
  if loop.exists():
    return (json.loads(loop.read_text()).get('loop') or {}).get('best_step')
  return None


def merge_matching(target, source, prefix=''):
  """Copies leaves of `source` into `target` where path and shape match; returns the new tree
  and the lists of loaded and skipped paths (skipped: missing or differently shaped)."""
  loaded, skipped = [], []

  def walk(t, s, path):
    if isinstance(t, dict):
      return {k: walk(v, s.get(k) if isinstance(s, dict) else None, f'{path}/{k}')
              for k, v in t.items()}
    if s is not None and tuple(np.shape(s)) == tuple(t.shape):
      loaded.append(path)
      return jax.numpy.asarray(s, t.dtype)
    skipped.append(path)
    return t

  return walk(target, source, prefix), loaded, skipped
