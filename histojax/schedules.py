"""Durations (steps or epochs → steps, in one place) and the optimizer with its schedule."""
import math

import jax
import jax.numpy as jnp
import optax


def steps(prefix, config, steps_per_epoch, *, default=None):
  """`<prefix>_steps` (wins when both are set) or `<prefix>_epochs` of `config` (or of a
  sub-dict), in steps."""
  n_steps = config.get(f'{prefix}_steps')
  n_epochs = config.get(f'{prefix}_epochs')
  if n_steps is not None:
    return int(n_steps)
  if n_epochs is not None:
    return max(1, int(math.ceil(n_epochs * steps_per_epoch)))
  if default is None:
    raise ValueError(f'Set {prefix}_steps or {prefix}_epochs in the config.')
  return default


def learning_rate(config, steps_per_epoch, total_steps):
  s, lr = config.schedule, config.optimizer.lr
  warmup = int(s.warmup_steps or 0)
  if s.name == 'constant':
    main = optax.constant_schedule(lr)
  elif s.name == 'step':
    every = steps('decay_every', s, steps_per_epoch)
    main = optax.exponential_decay(lr, every, s.decay_factor, staircase=True)
  elif s.name == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
  else:
    raise ValueError(f'Unknown schedule {s.name!r} (config key: schedule.name).')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def optimizer(config, steps_per_epoch, total_steps):
  lr = learning_rate(config, steps_per_epoch, total_steps)
  o = config.optimizer
  if o.name == 'adam':
    tx = optax.adam(lr)
  elif o.name == 'adamw':
    tx = optax.adamw(lr, weight_decay=o.weight_decay)
  elif o.name == 'sgd':
    tx = optax.sgd(lr, momentum=o.momentum, nesterov=True)
  else:
    raise ValueError(f'Unknown optimizer {o.name!r} (config key: optimizer.name).')
  # Head-first is for transfer: freezing a randomly initialised body would only waste steps.
  if config.freeze.steps and config.init_from:
    tx = head_first(tx, config.freeze.head, config.freeze.steps)
  return tx, lr


def head_first(tx, head_names, steps):
  """Transfer learning: only top-level modules in `head_names` move for the first `steps`
  steps, then everything (optax.multi_transform; the frozen part's updates are zeroed, its
  optimizer moments still accumulate, its BatchNorm statistics still update)."""
  gate = optax.scale_by_schedule(lambda step: jnp.where(step < steps, 0.0, 1.0))
  labels = lambda params: {
      k: jax.tree.map(lambda _, k=k: 'head' if k in head_names else 'body', v)
      for k, v in params.items()}
  return optax.multi_transform({'head': tx, 'body': optax.chain(tx, gate)}, labels)

