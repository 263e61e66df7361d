"""Orbax checkpoints: train state + loop state (data position = step, best, cost) + config.

Retention is decided here, not by orbax: after each save every checkpoint except the newest
`config.ckpt_keep` and the best one is deleted. The best step comes from the loop state saved in
every checkpoint, so it survives restarts (orbax's preservation policies see a step's metrics only in the process
that saved it: after a resume nothing looked protected, and the best checkpoint was deleted).
Saves are synchronous and go through orbax's temporary-path commit: a killed run never leaves a
half-written checkpoint, and a failed write (full disk) stops the run at once, naming the cause.
A checkpoint that cannot be read is never deleted: restore falls back to the newest readable
one and (when training would overwrite it) moves the bad one to W/checkpoints_corrupt/.
"""
import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from histojax import errors

TEST_SAVE_DELAY = 'HISTOJAX_TEST_SAVE_DELAY'  # seconds to stall each commit (fault tests)


def check_writable(directory):
  """Fails at once, naming the path and the cause, if checkpoints cannot be written there."""
  directory = pathlib.Path(directory)
  probe = directory / f'.write_test_{os.getpid()}'
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with open(probe, 'wb') as f:
      f.write(b'\0' * 4096)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise errors.CheckpointError(
        f'Cannot write checkpoints to {directory}: {e.strerror or e} '
        f'({type(e).__name__}). Free space there, fix its permissions, or choose another '
        '--workdir.') from e
  finally:
    with contextlib.suppress(OSError):  # the folder is missing or a file: said above
      probe.unlink(missing_ok=True)


def _short(e, limit=300):
  """One line for an exception: the OS cause first where one is buried in a TensorStore text."""
  text = ' '.join(str(e).split())
  cause = re.search(r"([A-Z][A-Za-z ]+) \[os_error_code='(\d+)'\]", text)
  if isinstance(e, OSError) and e.strerror:
    cause = f'{e.strerror} (errno {e.errno})'
  elif cause:
    cause = f'{cause.group(1).strip()} (errno {cause.group(2)})'
  text = f'{type(e).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'
  return f'{cause}; {text}' if cause else text


class Checkpoints:
  """The checkpoints of one workdir: save (then prune), restore with fallback."""

  def __init__(self, directory, *, read_only=False):
    self.directory = pathlib.Path(directory).absolute()
    if not read_only:
      check_writable(self.directory)
    elif not self.directory.is_dir():
      raise errors.CheckpointError(f'No checkpoints: {self.directory} does not exist.')
    if os.environ.get(TEST_SAVE_DELAY):
      _stall_commits(float(os.environ[TEST_SAVE_DELAY]))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                             enable_async_checkpointing=False),
        item_names=('state', 'loop'))

  def steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step, state, loop_state, keep=(), newest=1):
    """Writes checkpoint `step` (loop_state: JSON-able; an existing step gets only its loop
    state replaced), then deletes all others but the `newest` latest ones and the steps in
    `keep` (the best)."""
    if step not in self.steps():
      try:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop_state)), force=True)
        self.manager.wait_until_finished()
      except Exception as e:  # ENOSPC and friends arrive as OSError, ValueError, XlaRuntimeError
        raise errors.CheckpointError(
            f'Saving checkpoint step {step} to {self.directory} failed ({_short(e)}). The run '
            f'stopped; checkpoints already there are kept: {self.steps() or "none"}.') from e
    elif jax.process_index() == 0:
      # Step saved before (an evaluation interrupted at it, now run again): the arrays are the
      # same, the loop state (best so far, early stop) has moved on. Replaced atomically.
      path = self.directory / str(step) / 'loop' / 'metadata'
      tmp = path.with_name(f'.metadata.tmp{os.getpid()}')
      tmp.write_text(json.dumps(loop_state))
      os.replace(tmp, path)
    keep = {step, *self.steps()[-max(newest, 1):], *(s for s in keep if s is not None)}
    for old in self.steps():
      if old not in keep:
        self.manager.delete(old)

  def _check_shapes(self, step, abstract_state):
    """A checkpoint whose arrays do not fit the model the config builds is no corruption:
    say which arrays differ (it means the config changed under this workdir)."""
    saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / 'state').tree
    def shapes(tree):  # the model's arrays only: optimizer state trees differ in node types
      return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path):
              tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    want = shapes({'params': abstract_state.params,
                   'batch_stats': abstract_state.batch_stats})
    have = shapes({k: saved.get(k, {}) for k in ('params', 'batch_stats')})
    differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    # Optimizer state trees name their nodes differently on disk: compare the shapes held.
    held = lambda tree: sorted(tuple(x.shape) for x in jax.tree.leaves(tree))
    if not differ and held(abstract_state.opt_state) != held(saved.get('opt_state', {})):
      differ = ['opt_state (another optimizer, or head-first freeze on/off: optimizer.name, '
                'init_from, freeze)']
    if differ:
      shown = ', '.join(f'{k}: saved {have.get(k)}, config builds {want.get(k)}'
                        for k in differ[:4])
      raise errors.WorkdirError(
          f'Checkpoint {self.directory / str(step)} does not fit the model of this config '
          f'({len(differ)} arrays differ; {shown}). Use the config the run was trained with, '
          'or a new --workdir.')

  def restore(self, step, abstract_state):
    """Restores onto the shardings of `abstract_state` (a tree of ShapeDtypeStructs)."""
    self._check_shapes(step, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
    if not isinstance(restored['loop'], dict):
      raise ValueError(f'loop state is {type(restored["loop"]).__name__}, not a JSON object')
    return restored['state'], restored['loop']

  def restore_newest(self, abstract_state, *, steps=None, quarantine=False):
    """(step, state, loop) of the first restorable checkpoint of `steps` (default: all, newest
    first), or None if there is none. A damaged one is warned about by name and, with
    quarantine=True (training will write new checkpoints), moved aside once an older one has
    restored, so that its step can be saved again; nothing is moved when none restores."""
    candidates = (sorted(self.steps(), reverse=True) if steps is None
                  else list(dict.fromkeys(s for s in steps if s is not None)))
    damaged = []
    for step in candidates:
      try:
        restored = (step, *self.restore(step, abstract_state))
      except errors.WorkdirError:
        raise
      except Exception as e:  # a damaged checkpoint: TensorStore, JSON, missing files
        logging.warning('Checkpoint %s cannot be restored (%s); falling back to an older '
                        'one.', self.directory / str(step), _short(e))
        damaged.append(step)
        continue
      for bad in damaged if quarantine else ():
        self.set_aside(bad, 'checkpoints_corrupt')
      return restored
    if candidates:
      raise errors.CheckpointError(
          f'None of the checkpoints {candidates} in {self.directory} can be restored (see the '
          'warnings above); they are kept. Start a new --workdir, or remove the damaged ones.')
    return None

  def set_aside(self, step, folder):
    """Moves checkpoint `step` to W/<folder>/<step>-<time>: kept, but no longer resumed from."""
    target = self.directory.parent / folder / f'{step}-{int(time.time())}'
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      shutil.move(str(self.directory / str(step)), target)
      logging.warning('Moved checkpoint %s to %s (kept, not deleted).',
                      self.directory / str(step), target)
    if jax.process_count() > 1:  # every host must see the move before listing steps again
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'histojax set_aside {step}')
    self.manager.reload()

  def close(self):
    self.manager.close()


def _stall_commits(seconds):
  """Test-only: sleep before orbax renames a finished temporary checkpoint into place, so a
  test can kill the process while a checkpoint is being written."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    original = cls.finalize
    if getattr(original, 'stalled', False):
      continue

    async def finalize(self, *args, _original=original, **kwargs):
      time.sleep(seconds)
      return await _original(self, *args, **kwargs)
    finalize.stalled = True
    cls.finalize = finalize


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def _steps_under(path):
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def load_variables(path, in_channels=None):
  """{'params', 'batch_stats', 'step'} as numpy from a histojax workdir (its best checkpoint,
  else the latest, logging which), a checkpoints/<step> folder, or a torchvision-layout
  ResNet18 `.npz` (whose first conv is summed over RGB when in_channels=1)."""
  path = pathlib.Path(path)
  if path.suffix == '.npz':
    from histojax.models import torch_import  # pylint: disable=g-import-not-at-top
    return torch_import.convert_resnet18(path, in_channels=in_channels, skip_head=True)
  if (path / 'checkpoints').is_dir() or (path / 'config.json').is_file():
    path = path / 'checkpoints'
  if path.name == 'checkpoints' or not (path / 'state').is_dir():
    steps = _steps_under(path)
    if not steps:
      raise errors.CheckpointError(
          f'No checkpoint under {path}: the run has not saved one yet (train it first, or '
          'check the path).')
    candidates = _selection_order(path, steps)
  else:
    candidates = [path]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  for i, candidate in enumerate(candidates):
    try:
      with ocp.StandardCheckpointer() as ckptr:
        meta = ocp.StandardCheckpointHandler().metadata(candidate / 'state').tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              meta)
        state = ckptr.restore(candidate / 'state', target)
    except Exception as e:  # a damaged checkpoint: try the next candidate
      if i + 1 == len(candidates):
        raise errors.CheckpointError(f'Cannot read checkpoint {candidate}: {_short(e)}') from e
      logging.warning('Checkpoint %s cannot be read (%s); trying %s.', candidate, _short(e),
                      candidates[i + 1])
      continue
    logging.info('Loaded weights from checkpoint %s (step %s).', candidate,
                 int(np.asarray(state['step'])) if 'step' in state else candidate.name)
    return {'params': jax.tree.map(np.asarray, state['params']),
            'batch_stats': jax.tree.map(np.asarray, state.get('batch_stats', {})),
            'step': int(candidate.name) if candidate.name.isdigit() else None}


def _selection_order(path, steps):
  """The best step named by the newest readable loop state, then the others newest first."""
  best = None
  for step in reversed(steps):
    try:
      loop = json.loads((path / str(step) / 'loop' / 'metadata').read_text())
      best = (loop.get('loop') or {}).get('best_step')
      break
    except (OSError, ValueError, AttributeError):
      continue
  order = [s for s in reversed(steps)]
  if best is not None:
    if best in steps:
      order.remove(best)
      order.insert(0, best)
    else:
      logging.warning('The best checkpoint (step %d) is missing from %s; using the latest '
                      '(step %d).', best, path, steps[-1])
  return [path / str(s) for s in order]


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


def warm_start(params, batch_stats, path, head=()):
  """Transfer learning (config key init_from): the parameters and BatchNorm statistics of
  `path` (a workdir, a checkpoint, a torchvision ResNet18 .npz) copied into freshly initialised
  trees wherever path and shape match. Returns (params, batch_stats); logs what stayed random
  and warns when that is more than the new head (module names in `head`)."""
  stem = params.get('conv1', {}).get('kernel')  # ResNet: adapt .npz RGB weights to its inputs
  source = load_variables(path, in_channels=None if stem is None else stem.shape[2])
  params, loaded, skipped = merge_matching(params, source['params'])
  batch_stats, _, _ = merge_matching(batch_stats, source.get('batch_stats', {}))
  logging.info('init_from %s: loaded %d parameter arrays, kept %d freshly initialised: %s',
               path, len(loaded), len(skipped), ', '.join(skipped) or '-')
  heads = tuple(f'/{h}/' for h in head)
  body = [p for p in skipped if not p.startswith(heads)]
  if body:  # e.g. torchvision's 7x7 conv1 into the small 3x3 stem: silently random otherwise
    logging.warning('init_from %s: %d parameter arrays outside the head (%s) found no match of '
                    'the same path and shape and stay random: %s. (A torchvision .npz needs '
                    'the ImageNet stem: configs/nuclei_resnet18.py:imagenet.)',
                    path, len(body), ', '.join(heads) or '-', ', '.join(body))
  return params, batch_stats
