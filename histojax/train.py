"""THE train loop, shared by every task: mesh → input → model/optimizer → sharded state →
jitted steps → restore → loop (log, eval, checkpoint, early stop) → final report.

Tasks differ only by config and by their task object (histojax/tasks/base.py: inputs, loss,
metrics, evaluation, report sections). Data parallel: the batch is sharded over the mesh axis
"data", the state is replicated, and jit inserts the gradient all-reduce.
"""
import json
import logging
import os
import pathlib
import signal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from histojax import checkpoint, errors, models, report, schedules, sharding, tasks, writers
from histojax import workdir as workdir_lib
from histojax.data import datasets, pipeline


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def make_init(model, task, tx, sample_batch):
  def init(rng):
    x = task.inputs(sample_batch, rng, train=False)
    variables = model.init({'params': rng, 'dropout': rng}, x, train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))
  return init


def make_l2_penalty(config):
  """Keras-style kernel_regularizer / bias_regularizer: an explicit loss term
  l2_kernel * sum(kernel**2) + l2_bias * sum(bias**2) over conv/dense layers (not decoupled
  weight decay). BatchNorm's scale and bias (Keras: gamma/beta) are not regularised."""
  l2_kernel, l2_bias = config.l2_kernel, config.l2_bias

  def penalty(node):
    total = 0.0
    for name, value in node.items():
      if hasattr(value, 'items'):
        total = total + penalty(value)
      elif name == 'kernel' and l2_kernel:
        total = total + l2_kernel * jnp.sum(jnp.square(value))
      elif name == 'bias' and 'kernel' in node and l2_bias:  # a layer's bias, not BN's beta
        total = total + l2_bias * jnp.sum(jnp.square(value))
    return total
  return penalty if (l2_kernel or l2_bias) else (lambda params: 0.0)


def make_train_step(model, task, tx, base_rng, l2_penalty=lambda params: 0.0):
  """One SGD step. The step RNG is fold_in(base_rng, step): nothing random is carried."""
  def train_step(state, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)

    def loss_fn(params):
      x = task.inputs(batch, aug_rng, train=True)
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
          rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      loss = task.loss(logits, batch)
      return jnp.mean(loss) + l2_penalty(params), (logits, loss, updates.get('batch_stats', {}))

    grads, (logits, loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = task.train_metrics(logits, batch, loss)
    metrics['grad_norm'] = optax.tree.norm(grads)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics
  return train_step


def log_cpu_estimate(config, steps_left, steps_per_sec):
  """A GPU-sized recipe started on a CPU backend: how long it will take, and the :cpu recipe
  sized for 2 cores (config key cpu_recipe; empty in the :cpu recipes themselves)."""
  if not config.cpu_recipe:
    return
  hours = steps_left / steps_per_sec / 3600
  logging.warning(
      'This recipe is sized for a GPU: on this CPU backend the remaining %d steps take about '
      '%.1f hours (%.2f steps/s; evaluations not counted). On a CPU use its 2-core recipe: '
      'python launch.py --config=%s --workdir=... (BENCHMARKS.md: measured budgets).',
      steps_left, hours, steps_per_sec, config.cpu_recipe)


def _improved(value, best, mode):
  if value is None or not np.isfinite(value):  # an undefined metric never selects a step
    return False
  return best is None or (value > best if mode == 'max' else value < best)


def train_and_evaluate(config, workdir, mode='train'):
  """Trains (resuming W's newest checkpoint) and writes the final report; mode='eval' only
  reports. Returns {part: scalars} of the final report, or None when stopped by a signal."""
  workdir = pathlib.Path(workdir)
  with workdir_lib.Lock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, mode)


def _train_and_evaluate(config, workdir, mode):
  is_main = jax.process_index() == 0
  workdir_lib.check_values(config)
  ckpts = checkpoint.Checkpoints(workdir / 'checkpoints', read_only=mode == 'eval')
  if mode == 'eval' and ckpts.latest_step() is None:
    raise errors.WorkdirError(f'--mode=eval: no checkpoint in {ckpts.directory}.')
  # Refused before anything is written: a config that does not fit the saved run.
  config = workdir_lib.accept_config(workdir, config, mode,
                                     has_checkpoint=ckpts.latest_step() is not None)
  writer = writers.MetricWriter(workdir, enabled=is_main)
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  stop_requested = []

  def request_stop(signum, _):
    if stop_requested:  # a second Ctrl-C / SIGTERM: stop now, without saving
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    stop_requested.append(signal.Signals(signum).name)
  if mode == 'train':  # Ctrl-C and SIGTERM: save after the current step, exit cleanly
    for sig in handlers:
      signal.signal(sig, request_stop)
  try:
    return _run(config, workdir, mode, ckpts, writer, stop_requested)
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
    writer.close()
    ckpts.close()


def _run(config, workdir, mode, ckpts, writer, stop_requested):
  is_main = jax.process_index() == 0

  # ---------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config)
  sharding.check_batch(config.batch_size, mesh)
  sharding.check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())

  # --------------------------------------------------------------------- input
  splits = datasets.get_splits(config)
  datasets.log_info(splits)
  has_val = len(splits.val) > 0
  if not has_val:  # e.g. data.val_fraction=0: train on every training image
    logging.warning('No validation examples: no model selection and no early stopping; the '
                    'final report evaluates the last checkpoint.')
  task = tasks.get_task(config, splits.info)
  repeats = config.data.repeats_per_epoch
  per_epoch = pipeline.steps_per_epoch(len(splits.train) * repeats, config.batch_size)
  total_steps = schedules.steps('total', config, per_epoch)
  log_every = config.log_every_steps
  eval_every = schedules.steps('eval_every', config, per_epoch, default=total_steps)
  ckpt_every = schedules.steps('ckpt_every', config, per_epoch, default=total_steps)
  def train_stream(start_batch):  # one batch per step: the step is the stream's position
    return pipeline.train_stream(
        splits.train, global_batch=config.batch_size, seed=config.seed,
        workers=config.data.workers, transform=task.train_transform, repeats_per_epoch=repeats,
        start_batch=start_batch, **hosts)

  # ---------------------------------------------------------- model, optimizer
  model = models.get_model(config, task.out_channels)
  tx, lr_fn = schedules.optimizer(config, per_epoch, total_steps)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))

  # ------------------------------------------------------------- sharded state
  sample = splits.train[0]
  if task.train_transform is not None:
    sample = task.train_transform(sample, epoch=0, index=0)
  sample = {k: np.asarray(v)[None] for k, v in sample.items()}
  info = {k: v for k, v in splits.info.items() if k != 'notes'}  # what predict needs
  info['input_shape'] = list(sample['image'].shape[1:])
  state = jax.jit(make_init(model, task, tx, sample),
                  out_shardings=sharding.replicated(mesh))(init_rng)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('Model: %s, %d parameters; %d devices, %d hosts; %d steps (%d per epoch).',
               config.model.name, n_params, mesh.size, jax.process_count(), total_steps,
               per_epoch)

  # --------------------------------------------------------------- jitted steps
  train_step = jax.jit(make_train_step(model, task, tx, train_rng, make_l2_penalty(config)),
                       donate_argnums=(0,))

  def evaluate(state, source, postprocess=None):
    """The task's EvalResult over a whole split, each example counted once."""
    return task.evaluate(model, state, source, mesh=mesh, postprocess=postprocess, **hosts)

  # ------------------------------------------------------------------- restore
  loop = {'best_step': None, 'best_value': None, 'evals_since_best': 0, 'stopped_early': False,
          'starts': 0}
  cost = writers.Cost()
  # Own workdir first: a resumed run never re-initialises. A damaged newest checkpoint is
  # skipped (kept, moved aside when training) and the newest readable one is used.
  restored = ckpts.restore_newest(checkpoint.abstract(state), quarantine=mode == 'train')
  if restored is not None:
    start, state, saved = restored
    loop.update(saved['loop'])
    cost.resume(loop)
    if loop['best_step'] is not None and loop['best_step'] not in ckpts.steps():
      logging.warning('The best checkpoint (step %d) is no longer in %s; the best is chosen '
                      'afresh from the next evaluation.', loop['best_step'], ckpts.directory)
      loop.update(best_step=None, best_value=None, evals_since_best=0)
    logging.info('%s %s at step %d.', 'Restored' if mode == 'eval' else 'Resumed from',
                 ckpts.directory, start)
  elif config.init_from and mode == 'train':
    params, stats = checkpoint.warm_start(state.params, state.batch_stats, config.init_from,
                                          config.freeze.head)
    state = jax.device_put(state.replace(params=params, batch_stats=stats,
                                         opt_state=tx.init(params)),
                           sharding.replicated(mesh))

  loop['starts'] += 1
  if is_main and mode == 'train':  # only now: the config fits the saved run
    workdir_lib.write_json_atomic(workdir / 'config.json', json.loads(config.to_json()))
    workdir_lib.write_json_atomic(workdir / 'dataset_info.json', info)

  def save(state):
    step = int(state.step)
    loop.update(cpu_seconds=cost.cpu_seconds(), wall_seconds=cost.wall_seconds())
    ckpts.save(step, state, {'data_position': step, 'loop': loop,
                             'config': json.loads(config.to_json())},
               keep=(loop['best_step'],), newest=config.ckpt_keep)

  # ---------------------------------------------------------------------- loop
  step = int(state.step)
  train_iter = train_stream(step) if mode == 'train' and step < total_steps else None
  progress = writers.Progress(total_steps, step)
  pending = []  # (step, metrics on device) since the last log: checked for NaN/inf there

  def flush_train_metrics():
    if not pending:
      return
    steps_done, values = zip(*jax.device_get(pending))
    pending.clear()
    losses = np.array([v['loss'] for v in values])
    if not np.all(np.isfinite(losses)):
      bad = steps_done[int(np.argmin(np.isfinite(losses)))]
      # The loss of step k is computed with the parameters saved as checkpoint k-1: that
      # checkpoint and any later one led to the divergence. Set them aside (kept) so that a
      # re-run with a lower learning rate resumes from before it.
      diverged = [s for s in ckpts.steps() if s >= bad - 1]
      for s in diverged:
        ckpts.set_aside(s, 'checkpoints_diverged')
      resume = ckpts.latest_step()
      raise errors.TrainingDiverged(
          f'Non-finite training loss at step {bad}. Stopped' + (
              f'; checkpoints {diverged} led to it and were moved to '
              f'{workdir / "checkpoints_diverged"} (kept)' if diverged else '') +
          '. To go on, re-run with a lower --config.optimizer.lr: it ' + (
              f'resumes from step {resume}.' if resume is not None else 'starts afresh.'))
    scalars = {f'train/{k}': float(np.mean([v[k] for v in values])) for k in values[0]}
    scalars['train/lr'] = float(lr_fn(steps_done[-1] - 1))
    scalars.update(cost.scalars('train'))
    rate = progress.line(steps_done[-1], scalars)
    if np.isfinite(rate):
      scalars['train/steps_per_sec'] = rate
      if not loop.get('cpu_estimate_logged') and jax.default_backend() == 'cpu':
        loop['cpu_estimate_logged'] = True
        log_cpu_estimate(config, total_steps - steps_done[-1], rate)
    writer.write(steps_done[-1], scalars)

  while mode == 'train' and step < total_steps and not loop['stopped_early']:
    try:
      batch = sharding.to_global(mesh, next(train_iter))
    except Exception:  # pylint: disable=broad-except
      if not stop_requested:
        raise
      save(state)  # Ctrl-C reached the data workers too: the state in hand is complete
      logging.info('%s: saved step %d; re-run the same command to resume.',
                   stop_requested[0], step)
      break
    state, metrics = train_step(state, batch)
    step += 1
    pending.append((step, metrics))
    stop = bool(stop_requested) if jax.process_count() == 1 else False
    if step % log_every == 0 or step == total_steps or stop:
      flush_train_metrics()
      if jax.process_count() > 1:  # every host must agree before a collective save
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        stop = bool(np.any(multihost_utils.process_allgather(np.array(bool(stop_requested)))))
    val = None
    if has_val and (step % eval_every == 0 or step == total_steps):
      result = evaluate(state, splits.val)
      val = {f'val/{k}': v for k, v in result.scalars.items()}
      writer.write(step, val)
      writer.write_images(step, result.images)
      logging.info('step %d | %s', step, ' '.join(f'{k} {v:.4f}' for k, v in val.items()))
      if config.best_metric not in val:
        raise KeyError(f'config.best_metric={config.best_metric!r} is not a validation metric; '
                       f'choose one of {sorted(val)}.')
      if _improved(val[config.best_metric], loop['best_value'], config.best_mode):
        loop.update(best_step=step, best_value=val[config.best_metric], evals_since_best=0)
      else:
        loop['evals_since_best'] += 1
      patience = config.early_stopping_patience
      if patience and loop['evals_since_best'] >= patience:
        logging.info('Early stopping at step %d: %s has not improved for %d evaluations '
                     '(best %.4f at step %d).', step, config.best_metric, patience,
                     loop['best_value'], loop['best_step'])
        loop['stopped_early'] = True
        stop = True
    if (step % ckpt_every == 0 or step == total_steps or stop
        or (val is not None and loop['best_step'] == step)):
      flush_train_metrics()
      save(state)
    if stop:
      if stop_requested:
        logging.info('%s: saved step %d; re-run the same command to resume.',
                     stop_requested[0], step)
      break
  flush_train_metrics()

  # ------------------------------------------- final report (best checkpoint, test)
  if stop_requested or (mode == 'train' and step < total_steps and not loop['stopped_early']):
    return None
  final_step = loop['best_step'] if loop['best_step'] is not None else ckpts.latest_step()
  if final_step is not None and final_step not in ckpts.steps():
    logging.warning('The best checkpoint (step %d) is missing from %s; reporting the latest '
                    '(step %d) instead.', final_step, ckpts.directory, ckpts.latest_step())
    final_step = ckpts.latest_step()
  if final_step is not None and final_step != int(state.step):
    final_step, state, _ = ckpts.restore_newest(checkpoint.abstract(state),
                                                steps=[final_step, ckpts.latest_step()])
  return final_report(config, workdir, task, model, state, splits, evaluate, writer, loop, cost)


def final_report(config, workdir, task, model, state, splits, evaluate, writer, loop, cost):
  """The selected checkpoint scored on val (post-processing chosen there), then on every test
  part (read only here); W/report.md, W/postprocess.json. Returns {part: scalars}."""
  is_main = jax.process_index() == 0
  final_step = int(state.step)
  results = {}
  postprocess = None  # the config's, when there is no val to choose on
  if len(splits.val):
    results['val'] = task.select_on_val(evaluate(state, splits.val))
    postprocess = results['val'].postprocess
    writer.write(final_step, {f'final_val/{k}': v for k, v in results['val'].scalars.items()})
    if is_main:  # before any test part is read; --mode=predict applies the same
      workdir_lib.write_json_atomic(workdir / 'postprocess.json', postprocess)
  for part, source in splits.tests.items():
    results[part] = evaluate(state, source, postprocess)
    writer.write(final_step, {f'{part}/{k}': v for k, v in results[part].scalars.items()})
  pooled = task.pool_tests([results[p] for p in splits.tests]) if len(splits.tests) > 1 else None
  if pooled is not None:
    results['test'] = pooled
    writer.write(final_step, {f'test/{k}': v for k, v in pooled.scalars.items()})
  extra = []
  if is_main:
    if 'val' not in results:  # the config's settings, as the test parts were scored
      workdir_lib.write_json_atomic(workdir / 'postprocess.json',
                                    next(iter(results.values())).postprocess)
    part = next(iter(splits.tests))
    extra = task.explain(model, state, splits.tests[part], workdir, part)
  totals = cost.scalars('cost')  # the whole run: every start, dataset build, this report
  writer.write(final_step, totals)
  if is_main:
    report.write(workdir, config, task, results, final_step, loop, splits.info, extra,
                 cost=totals)
  logging.info('Params fingerprint (process %d): %.10e', jax.process_index(),
               float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(state.params))))
  for part, result in results.items():
    logging.info('Final (step %d): %s %s', final_step, part,
                 ' '.join(f'{k} {v:.4f}' for k, v in result.scalars.items()))
  return {part: result.scalars for part, result in results.items()}
