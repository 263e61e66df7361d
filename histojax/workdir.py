"""A run's folder: one run at a time (a lock), its config.json, and the config changes a
restart accepts.

Config keys come in three kinds (the `kind` function; every key not named below shapes):
- shaping: the model, task, dataset, splits, seed, batch, crop size, ...: they decide what the
  saved state and data are. A change is refused before anything is written.
- resumable: durations, optimiser and schedule settings, losses, augmentation strength: a
  restart may change them (each change is logged) and config.json records the new values.
- runtime: workers, eval batch, log interval, `inference.*`, metric and report options,
  devices: free in every mode; `--mode=eval` and `--mode=predict` take them from --config.
"""
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import time

import ml_collections

from histojax import errors

RUNTIME = ('log_every_steps', 'ckpt_keep', 'eval_batch_size', 'data.workers', 'cpu_recipe',
           'smoke',
           'data.tfds_data_dir', 'inference.*', 'report_panels', 'explain_indices',
           'explain_samples', 'mesh', 'distributed', 'detection_radius', 'ignore_empty',
           'object_min_size', 'object_min_size_candidates', 'detection_split',
           'detection_split_candidates', 'final_test', 'data.mpp')
# Not here, so shaping: best_metric/best_mode (the best value so far would compare another
# metric), init_from and freeze.* (head-first training wraps the optimizer state).
RESUMABLE = ('total_steps', 'total_epochs', 'eval_every_steps', 'eval_every_epochs',
             'ckpt_every_steps', 'ckpt_every_epochs', 'early_stopping_patience', 'optimizer.lr',
             'optimizer.weight_decay', 'schedule.*', 'l2_kernel', 'l2_bias', 'dtype',
             'class_weights', 'loss', 'dice_weight', 'dice_over', 'model.dropout',
             'data.augment.*',
             'data.max_eval_examples')
SHAPING_UNDER_AUGMENT = ('data.augment.crop_size',)  # the crop decides the example shape


def kind(key: str) -> str:
  """'shaping', 'resumable' or 'runtime' for a dotted config key."""
  def matches(patterns):
    return any(key == p or (p.endswith('.*') and key.startswith(p[:-1])) for p in patterns)
  if key in SHAPING_UNDER_AUGMENT:
    return 'shaping'
  if matches(RUNTIME):
    return 'runtime'
  return 'resumable' if matches(RESUMABLE) else 'shaping'


def flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _plain(value):
  """JSON round trip, so tuples compare equal to the lists config.json stores."""
  return json.loads(json.dumps(value, default=str))


_MISSING = object()


def changes(saved: dict, new: dict, defaults: dict | None = None) -> dict:
  """{dotted key: (saved value, new value)} where they differ. A key that is a value on one
  side and a group on the other differs as a whole. A key the saved config lacks (written
  before the key existed) took its default then: it differs only if the new value is not
  that default (`defaults`, a nested dict; keys without a known default are not compared)."""
  saved, new, defaults = _plain(saved), _plain(new), _plain(defaults or {})
  out = {}

  def walk(a, b, d, prefix):
    for k in sorted(set(a) | set(b)):
      x, y = a.get(k, _MISSING), b.get(k, _MISSING)
      dk = d.get(k, _MISSING) if isinstance(d, dict) else _MISSING
      if y is _MISSING:
        continue  # a key today's code no longer has
      if x is _MISSING:
        x = dk
        if x is _MISSING:
          continue
      if isinstance(x, dict) and isinstance(y, dict):
        walk(x, y, dk if isinstance(dk, dict) else {}, f'{prefix}{k}.')
      elif x != y:
        out[f'{prefix}{k}'] = (x, y)
  walk(saved, new, defaults, '')
  return out


def read_json(path, what='file'):
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except FileNotFoundError:
    raise
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(f'{path} is not a readable JSON {what} ({e}); it may have been '
                              'truncated. Restore it, or start a new --workdir.') from e


def write_json_atomic(path, value):
  """Writes JSON to a temporary file and renames it into place: never a torn file."""
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(json.dumps(value, indent=2))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def saved_config(workdir):
  """W/config.json over today's defaults (keys it lacks take their defaults), or None."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  saved = read_json(path, 'config')
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.base_config().to_dict()

  def overlay(base, top):
    for k, v in top.items():
      base[k] = overlay(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base
  return ml_collections.ConfigDict(overlay(config, saved))


def accept_config(workdir, config, mode, has_checkpoint=True):
  """The config this run uses. Refuses (before anything is written) shaping changes against
  W/config.json; logs resumable ones (train) or keeps the saved values (eval/predict). Before
  the first checkpoint (e.g. a start that ran out of memory) any change is accepted."""
  saved = saved_config(workdir)  # over today's defaults: keys it lacks took them then
  if saved is None:
    return config
  diff = changes(saved.to_dict(), config.to_dict())
  if mode == 'train' and not has_checkpoint:
    for k, (a, b) in diff.items():
      logging.info('Config change (no checkpoint saved yet): %s %r -> %r.', k, a, b)
    return config
  shaping = {k: v for k, v in diff.items() if kind(k) == 'shaping'}
  if diff.get('data.mpp', (0,))[0]:  # runtime only while unknown (0): slides were cut at it
    shaping['data.mpp'] = diff['data.mpp']
  if shaping:
    shown = '; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in shaping.items())
    raise errors.WorkdirError(
        f'{workdir} holds a run whose config differs in keys that shape the model or the '
        f'data: {shown}. Nothing was changed. Use a new --workdir for the new config, or '
        f'drop these overrides to continue the run (kinds of keys: histojax/workdir.py).')
  resumable = {k: v for k, v in diff.items() if kind(k) == 'resumable'}
  for k, (a, b) in resumable.items():
    if mode == 'train':
      logging.info('Config change on restart: %s %r -> %r.', k, a, b)
  if mode == 'train' or not resumable:
    return config
  keep = ml_collections.ConfigDict(config.to_dict())  # eval/predict: the run's own values
  for k, (a, _) in resumable.items():
    parent = keep
    *head, last = k.split('.')
    for h in head:
      parent = parent[h]
    parent[last] = a
  return keep


class Lock:
  """One run per workdir: an exclusive flock on W/.lock held by process 0 (the other processes
  of one multi-host run share the workdir under it). The kernel drops it when the process dies,
  so a stale lock is simply taken over."""

  def __init__(self, workdir, enabled=True):
    self.path, self.enabled, self._file = pathlib.Path(workdir) / '.lock', enabled, None

  def __enter__(self):
    if not self.enabled:
      return self
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, 'a+', encoding='utf-8')
    except OSError as e:
      raise errors.WorkdirError(f'Cannot write to the workdir {self.path.parent}: '
                                f'{e.strerror or e}. Choose a writable --workdir.') from e
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        logging.warning('Cannot lock %s (%s: file system without flock?); running without '
                        'the one-run-per-workdir check.', self.path, e.strerror or e)
        self._file.close()
        self._file = None
        return self
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise errors.WorkdirError(
          f'{self.path.parent} is in use by {holder}. Wait for that run to end (or stop it), '
          'or use another --workdir.') from e
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'pid {os.getpid()} on host {socket.gethostname()} (since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")})\n')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


CHOICES = {'dtype': ('float32', 'bfloat16'), 'best_mode': ('max', 'min'),
           'optimizer.name': ('adam', 'adamw', 'sgd'),
           'schedule.name': ('constant', 'step', 'cosine'),
           'inference.tta': ('none', 'flips', 'dihedral'),
           'inference.blend': ('gaussian', 'constant')}


def check_values(config):
  """Config values with a fixed set of choices, checked before anything runs."""
  values = flatten(config.to_dict())
  for key, allowed in CHOICES.items():
    if key in values and values[key] not in allowed:
      raise errors.ConfigError(f'Config key {key}={values[key]!r} is not one of '
                               f'{", ".join(allowed)}.')
