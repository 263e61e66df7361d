"""Sweep files (`sweeps/<name>.py`): loading and checking, before any trial runs.

A sweep file defines `get_sweep(arg=None)` returning a ConfigDict (arguments parsed as config
arguments are: configs/common.py `parse_arg`) with:
  space: a tuple of parameters over any config fields, built with the helpers below:
         log_uniform('optimizer.lr', 1e-4, 1e-2), uniform(...), integer('model.base_width',
         8, 32, step=8), categorical('batch_size', (32, 64, 128)).
  metric: 'final_val/<m>': <m> of the selected checkpoint's final validation report; the
         pruner sees `val/<m>` after every evaluation. Sweeps never look at test. '' (the
         default): the config's best_metric.
  direction: 'maximize' | 'minimize' | '' (the config's best_mode when `val/<m>` is its
         best_metric).
  num_trials: trials in the study, over every worker and machine (an interrupted trial that
         is retried counts once).
  sampler: 'tpe' (default) | 'random' | 'grid' (categorical / stepped integer spaces); seed.
  pruner: dict(name='median' | 'hyperband' | 'successive_halving' | 'none', ...): median:
         startup_trials (complete trials before any pruning), warmup_steps (no pruning
         before this step: the pruner's steps are hundredths of an epoch, so 100 = after the
         first epoch); hyperband / successive_halving: reduction_factor (their resource is
         counted in the same hundredths of an epoch).
  enqueue: parameter dicts tried first (a known-good point, the config's own values, ...).
  enqueue_defaults: True: trial 0 runs the config's own values of the space's fields (the
         baseline the sweep is compared with).
Every mistake is one SweepError naming the file and the key.
"""
import copy
import difflib
import importlib.util
import math
import pathlib

import ml_collections

from histojax import errors
from histojax import workdir as workdir_lib

SAMPLERS = ('tpe', 'random', 'grid')
PRUNERS = ('median', 'hyperband', 'successive_halving', 'none')
KEYS = ('space', 'metric', 'direction', 'num_trials', 'sampler', 'seed', 'pruner', 'enqueue',
        'enqueue_defaults')


class SweepError(errors.UserError, ValueError):
  """A sweep file that cannot work (names the file and the key)."""


# ----------------------------------------------------------------- the space's parameters
def uniform(key, low, high):
  return dict(key=key, type='float', low=float(low), high=float(high), log=False)


def log_uniform(key, low, high):
  return dict(key=key, type='float', low=float(low), high=float(high), log=True)


def integer(key, low, high, step=1, log=False):
  return dict(key=key, type='int', low=int(low), high=int(high), step=int(step), log=log)


def categorical(key, choices):
  return dict(key=key, type='categorical', choices=tuple(choices))


def defaults():
  return ml_collections.ConfigDict(dict(
      space=(), metric='', direction='', num_trials=20, sampler='tpe', seed=0,
      pruner=dict(name='median', startup_trials=3, warmup_steps=0, reduction_factor=3),
      enqueue=(), enqueue_defaults=False))


# ------------------------------------------------------------------------------ loading
def load(spec):
  """'sweeps/x.py[:arg]' → (the checked-later sweep ConfigDict, the file's path)."""
  path, _, arg = str(spec).partition(':')
  path = pathlib.Path(path)
  if not path.is_file():
    raise SweepError(f'--sweep={spec}: no such file {path}.')
  module_spec = importlib.util.spec_from_file_location(f'histojax_sweep_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'{path}: cannot be loaded: {type(e).__name__}: {e}') from e
  if not callable(getattr(module, 'get_sweep', None)):
    raise SweepError(f'{path} has no get_sweep(arg=None) function: a sweep file defines one '
                     '(see sweeps/lr_batch.py).')
  try:
    given = module.get_sweep(arg or None)
  except ValueError as e:
    raise SweepError(f'{path}: {e}') from e
  unknown = sorted(set(given) - set(KEYS))
  if unknown:
    raise SweepError(f'{path}: unknown sweep key(s) {unknown}; known: {list(KEYS)}.')
  sweep = defaults()
  given = dict(given)
  pruner = dict(sweep.pruner)
  pruner.update(dict(given.pop('pruner', None) or {}))
  sweep.update(given)
  sweep.pruner = pruner
  return sweep, path


# ----------------------------------------------------------------------------- checking
def check(sweep, path, config):
  """Raises SweepError unless every parameter is a config field of a fitting type with a
  non-empty range, sampler and pruner exist, and every enqueued point (the config's own values
  with enqueue_defaults) lies in the space. Needs no data: it runs first."""
  where = f'{path}'
  fields = workdir_lib.flatten(config.to_dict())
  if not sweep.space:
    raise SweepError(f'{where}: `space` is empty; name at least one config field.')
  seen = set()
  for i, param in enumerate(sweep.space):
    param = dict(param)
    key = param.get('key')
    at = f'{where}: space[{i}] ({key!r})'
    if key not in fields:
      near = difflib.get_close_matches(str(key), list(fields), n=3)
      raise SweepError(f'{at}: unknown config field {key!r}' +
                       (f'; did you mean {near}?' if near else '.'))
    if key in seen:
      raise SweepError(f'{at}: {key!r} appears twice in the space.')
    seen.add(key)
    kind = param.get('type')
    if kind in ('float', 'int'):
      low, high = param['low'], param['high']
      if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SweepError(f'{at}: empty range [{low}, {high}]: low must be below high.')
      if param.get('log') and low <= 0:
        raise SweepError(f'{at}: a log range needs low > 0, got {low}.')
      if kind == 'int' and (param['step'] < 1 or (param['high'] - low) % param['step']):
        raise SweepError(f'{at}: step {param["step"]} must be >= 1 and divide high - low.')
      if kind == 'int' and param.get('log') and param['step'] != 1:
        raise SweepError(f'{at}: a log integer range takes no step (Optuna).')
      values = (low, high)
    elif kind == 'categorical':
      values = param['choices']
      if not values:
        raise SweepError(f'{at}: no choices.')
      bad = [v for v in values if not isinstance(v, (bool, int, float, str, type(None)))]
      if bad:
        raise SweepError(f'{at}: choices must be numbers, strings, booleans or None (Optuna '
                         f'stores them), not {bad}; add an integer config field instead.')
    else:
      raise SweepError(f'{at}: unknown type {kind!r}; use uniform, log_uniform, integer or '
                       'categorical (histojax/sweep_spec.py).')
    for value in values:
      apply(config, {key: value}, at)
  if int(sweep.num_trials) < 1:
    raise SweepError(f'{where}: num_trials must be >= 1, got {sweep.num_trials}.')
  if sweep.sampler not in SAMPLERS:
    raise SweepError(f'{where}: sampler {sweep.sampler!r}; use one of {SAMPLERS}.')
  if sweep.sampler == 'grid':
    grid(sweep, where)
  pruner = dict(sweep.pruner)
  if pruner['name'] not in PRUNERS:
    raise SweepError(f'{where}: pruner name {pruner["name"]!r}; use one of {PRUNERS}.')
  unknown = sorted(set(pruner) - set(defaults().pruner))
  if unknown:
    raise SweepError(f'{where}: unknown pruner key(s) {unknown}; known: '
                     f'{sorted(defaults().pruner)}.')
  dists = distributions(sweep)
  for i, point in enumerate(points(sweep, config)):
    at = (f'{where}: enqueue_defaults (the config\'s own values)'
          if sweep.enqueue_defaults and i == 0 else f'{where}: enqueue point {dict(point)}')
    extra = sorted(set(point) - seen)
    if extra:
      raise SweepError(f'{at} sets {extra}, not in the space.')
    for key, value in point.items():
      if not _inside(dists[key], value):
        raise SweepError(f'{at}: {key}={value!r} lies outside the space '
                         f'({_describe(key, sweep)}).')
    apply(config, dict(point), at)
  if len(points(sweep, config)) > int(sweep.num_trials):
    raise SweepError(f'{where}: {len(points(sweep, config))} enqueued points but num_trials='
                     f'{sweep.num_trials}: every enqueued point is a trial.')


def check_metric(sweep, path, config, metric_names):
  """(<m>, direction): `metric` is final_val/<m> with <m> among the task's validation metrics
  (`metric_names`, what its evaluation returns); '' is the config's best_metric."""
  where = f'{path}'
  selection = config.best_metric  # '': the sweep's metric is the config's own
  m = metric_name(sweep.metric, where) if sweep.metric else selection.split('/', 1)[-1]
  if m not in metric_names:
    raise SweepError(f'{where}: metric {sweep.metric or m!r} is not a validation metric of this '
                     f'task; choose final_val/<m> with <m> one of {sorted(metric_names)}.')
  direction = sweep.direction
  if not direction:
    if config.best_metric != f'val/{m}':
      raise SweepError(f'{where}: set direction (maximize | minimize) for metric '
                       f'{sweep.metric!r}: it is not the config\'s best_metric.')
    direction = 'maximize' if config.best_mode == 'max' else 'minimize'
  if direction not in ('maximize', 'minimize'):
    raise SweepError(f'{where}: direction {direction!r}; use maximize or minimize.')
  return m, direction


def points(sweep, config):
  """The points tried first: the config's own values (enqueue_defaults), then `enqueue`."""
  out = [dict(x) for x in sweep.enqueue]
  if sweep.enqueue_defaults:
    values = workdir_lib.flatten(config.to_dict())
    out.insert(0, {x['key']: values[x['key']] for x in sweep.space})
  return out


def _inside(distribution, value):
  try:
    # pylint: disable-next=protected-access
    return distribution._contains(distribution.to_internal_repr(value))
  except ValueError:  # a categorical value that is none of the choices
    return False


def _describe(key, sweep):
  param = next(dict(p) for p in sweep.space if p['key'] == key)
  if param['type'] == 'categorical':
    return f'choices {list(param["choices"])}'
  return f'[{param["low"]}, {param["high"]}]'


def metric_name(metric, where):
  prefix = 'final_val/'
  if not str(metric).startswith(prefix):
    raise SweepError(f'{where}: metric {metric!r} must be final_val/<m> (the selected '
                     'checkpoint\'s validation report; sweeps never read test).')
  return metric[len(prefix):]


def apply(config, params, where='the sweep'):
  """A copy of `config` with `params` ({dotted key: value}) set; a value of the wrong type
  for its field is a SweepError naming it."""
  out = copy.deepcopy(config)
  for key, value in params.items():
    try:
      with out.unlocked():
        out.update_from_flattened_dict({key: value})
    except (TypeError, ValueError, KeyError) as e:
      raise SweepError(f'{where}: config field {key!r} cannot take {value!r}: {e}') from e
  return out


def grid(sweep, where):
  """{key: values} for Optuna's GridSampler: categorical choices, or every stepped integer."""
  out = {}
  for param in sweep.space:
    if param['type'] == 'categorical':
      out[param['key']] = list(param['choices'])
    elif param['type'] == 'int' and not param.get('log'):
      out[param['key']] = list(range(param['low'], param['high'] + 1, param['step']))
    else:
      raise SweepError(f'{where}: sampler grid needs categorical or (linear) integer '
                       f'parameters; {param["key"]!r} is a {param["type"]} range.')
  return out


def distributions(sweep):
  """{key: optuna distribution} of the space."""
  import optuna  # pylint: disable=g-import-not-at-top
  out = {}
  for param in sweep.space:
    if param['type'] == 'float':
      out[param['key']] = optuna.distributions.FloatDistribution(
          param['low'], param['high'], log=param['log'])
    elif param['type'] == 'int':
      out[param['key']] = optuna.distributions.IntDistribution(
          param['low'], param['high'], step=param['step'], log=param['log'])
    else:
      out[param['key']] = optuna.distributions.CategoricalDistribution(
          list(param['choices']))
  return out
