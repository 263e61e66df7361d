"""THE train loop, shared by every task: mesh → input → model/optimizer → sharded state →
jitted steps → restore → loop (log, eval, checkpoint, early stop) → final report.

Tasks differ only by config and by their task object (histojax/tasks/base.py: inputs, loss,
metrics, evaluation, report sections). Data parallel: the batch is sharded over the mesh axis
"data", the state is replicated, and jit inserts the gradient all-reduce.
"""
import contextlib
import json
import logging
import pathlib
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from histojax import checkpoint, errors, final, models, schedules, sharding, stopping, tasks
from histojax import writers
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


EVAL_LOG_S = 10.0  # an evaluation's progress line at most this often; none if it is shorter


def train_and_evaluate(config, workdir, mode='train', exit_on_signal=False, on_eval=None):
  """Trains (resuming W's newest checkpoint) and writes the final report; mode='eval' only
  reports. Returns {part: scalars} of the final report (from W/final.json, unevaluated, when
  the same finished run is started again), or None when stopped by a signal.

  on_eval(step, epoch, val_scalars), when given, is called after each validation evaluation
  during training (once that step is saved, if it is saved at all; epoch = step / steps per
  epoch); it may raise to end the run, as a sweep's pruner does (histojax/sweep.py)."""
  workdir = pathlib.Path(workdir)
  with workdir_lib.Lock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, mode, exit_on_signal, on_eval)


def _train_and_evaluate(config, workdir, mode, exit_on_signal, on_eval):
  is_main = jax.process_index() == 0
  workdir_lib.check_values(config)
  pipeline.resolve_workers(config.data.workers)  # a bad value fails before anything runs
  ckpts = checkpoint.Checkpoints(workdir / 'checkpoints', read_only=mode == 'eval')
  try:
    if mode == 'eval' and ckpts.latest_step() is None:
      raise errors.WorkdirError(f'--mode=eval: no checkpoint in {ckpts.directory}.')
    # Refused before anything is written: a config that does not fit the saved run.
    config = workdir_lib.accept_config(workdir, config, mode,
                                       has_checkpoint=ckpts.latest_step() is not None)
    finished = final.already_finished(workdir, config, ckpts) if mode == 'train' else None
    if finished is not None:
      return finished
    writer = writers.MetricWriter(workdir, enabled=is_main)
    try:
      # Ctrl-C and SIGTERM while training: save what is new, exit 0 within seconds, even from
      # inside XLA compilation (histojax/stopping.py).
      # The watcher may end the process (os._exit): only when launch.py owns it, never a
      # notebook or test that calls this function.
      with stopping.StopGuard(enabled=mode == 'train',
                              watch=exit_on_signal and jax.process_count() == 1) as guard, \
          contextlib.ExitStack() as closing:  # the training stream's workers, however it ends
        return _run(config, workdir, mode, ckpts, writer, guard, closing, on_eval)
    finally:
      writer.close()
  finally:
    ckpts.close()


def _run(config, workdir, mode, ckpts, writer, guard, closing, on_eval):
  is_main = jax.process_index() == 0
  single = jax.process_count() == 1  # several hosts agree on a stop at log steps instead

  # ---------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config)
  sharding.check_batch(config.batch_size, mesh)
  sharding.check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())

  # --------------------------------------------------------------------- input
  workers = pipeline.resolve_workers(config.data.workers)
  if mode == 'train':
    logging.info('Data workers: %d (data.workers=%r; %d usable CPUs).', workers,
                 config.data.workers, pipeline.usable_cpus())
  splits = datasets.get_splits(config)
  datasets.log_info(splits)
  has_val = len(splits.val) > 0
  if not has_val:  # e.g. data.val_fraction=0: train on every training image
    logging.warning('No validation examples: no model selection and no early stopping; the '
                    'final report evaluates the last checkpoint.')
  task = tasks.get_task(config, splits.info)
  val_metrics = {f'val/{name}' for name in task.metric_names()}
  if has_val and config.best_metric not in val_metrics:
    raise errors.ConfigError(f'config.best_metric={config.best_metric!r} is not a validation '
                             f'metric of this task; choose one of {sorted(val_metrics)}.')
  repeats = config.data.repeats_per_epoch
  per_epoch = pipeline.steps_per_epoch(len(splits.train) * repeats, config.batch_size)
  total_steps = schedules.steps('total', config, per_epoch)
  log_every = config.log_every_steps
  eval_every = schedules.steps('eval_every', config, per_epoch, default=total_steps)
  ckpt_every = schedules.steps('ckpt_every', config, per_epoch, default=total_steps)
  def train_stream(start_batch):  # one batch per step: the step is the stream's position
    return closing.enter_context(contextlib.closing(pipeline.train_stream(
        splits.train, global_batch=config.batch_size, seed=config.seed, workers=workers,
        transform=task.train_transform, repeats_per_epoch=repeats, start_batch=start_batch,
        **hosts)))

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

  def evaluate(state, source, postprocess=None, part='val'):
    """The task's EvalResult over a whole split, each example counted once. A progress line
    at most every EVAL_LOG_S; a requested stop ends it between examples (StopRequested)."""
    start = last = time.perf_counter()

    def progress(done, total):
      nonlocal last
      if guard.requested and single:
        raise errors.StopRequested(guard.requested[0])
      now = time.perf_counter()
      if now - last >= EVAL_LOG_S and 0 < done < total:
        last, rate = now, done / (now - start)
        logging.info('eval %s: %d/%d images (%s, ETA %s)', part, done, total,
                     writers.format_rate(rate, 'image'),
                     writers.format_duration((total - done) / rate))
    return task.evaluate(model, state, source, mesh=mesh, postprocess=postprocess,
                         progress=progress, **hosts)

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
    if mode == 'eval' and loop.get('eval_interrupted') == start:
      logging.warning('Step %d was saved by a stop during its validation evaluation, which has '
                      'not run since: the best checkpoint so far may not be final. Re-run '
                      'the training command to finish it.', start)
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
    writer.write_config(int(state.step), json.loads(config.to_json()),
                        metrics=(config.best_metric,))

  def save(state):
    step = int(state.step)
    loop.update(cpu_seconds=cost.cpu_seconds(), wall_seconds=cost.wall_seconds())
    with guard.saving(step):  # the stop watcher never ends the process mid-save
      ckpts.save(step, state, {'data_position': step, 'loop': loop,
                               'config': json.loads(config.to_json())},
                 keep=(loop['best_step'],), newest=config.ckpt_keep)

  # ---------------------------------------------------------------------- loop
  step = guard.saved_step = int(state.step)
  train_iter = None  # started at the first step: grain workers take seconds to spawn
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

  # A stop during an evaluation saved the state being scored, marked: that evaluation runs
  # again first, so that model selection sees every evaluation an uninterrupted run makes.
  redo_eval = mode == 'train' and has_val and loop.pop('eval_interrupted', None) == step
  if mode == 'train' and guard.requested and single:  # in start-up; the watcher left it to us
    guard.take()
    logging.info('%s during start-up: nothing new since step %d to save; exiting.',
                 guard.requested[0], step)
    return None
  while mode == 'train' and (step < total_steps or redo_eval) and not loop['stopped_early']:
    stop = False
    if not redo_eval:
      if train_iter is None:
        train_iter = train_stream(step)
      try:
        batch = sharding.to_global(mesh, next(train_iter))
      except Exception:  # pylint: disable=broad-except
        if not guard.requested:
          raise
        guard.take()  # Ctrl-C reached the data workers too: the state in hand is complete
        if guard.unsaved:
          save(state)
          logging.info('%s: saved step %d; re-run the same command to resume.',
                       guard.requested[0], step)
        else:
          logging.info('%s: nothing new since step %d to save; exiting.', guard.requested[0],
                       guard.saved_step)
        break
      started = time.perf_counter()
      state, metrics = train_step(state, batch)
      step += 1
      guard.unsaved = True
      if guard.phase != 'training':  # the first step of this start, compilation included
        jax.block_until_ready(metrics)
        progress.started(step, time.perf_counter() - started)
        guard.phase = 'training'
      pending.append((step, metrics))
      if len(pending) > 1:  # at most two steps in flight: on CPU, dispatch otherwise runs
        jax.block_until_ready(pending[-2][1])  # steps ahead, and a stop waits for them all
      stop = bool(guard.requested) if single else False
      if stop:
        guard.take()
      if step % log_every == 0 or step == total_steps or stop:
        flush_train_metrics()
        if not single:  # every host must agree before a collective save
          from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
          stop = bool(np.any(multihost_utils.process_allgather(np.array(bool(guard.requested)))))
    val = None
    if has_val and (redo_eval or step % eval_every == 0 or step == total_steps):
      phase, guard.phase = guard.phase, 'evaluation'
      try:
        if stop and single:  # requested at this step: skip the evaluation at once
          raise errors.StopRequested(guard.requested[0])
        result = evaluate(state, splits.val)
      except errors.StopRequested as e:
        guard.take()
        flush_train_metrics()
        if guard.unsaved:
          loop['eval_interrupted'] = step
          save(state)
          del loop['eval_interrupted']
          logging.info('%s%s: saved step %d; re-run the same command to resume (it evaluates '
                       'step %d first).', e.signal_name, '' if stop else ' during evaluation',
                       step, step)
        else:
          logging.info('%s during evaluation: nothing new since step %d to save; exiting.',
                       e.signal_name, guard.saved_step)
        break
      guard.phase = phase
      val = {f'val/{k}': v for k, v in result.scalars.items()}
      if set(val) != val_metrics:  # the contract sweeps and best_metric are checked against
        raise RuntimeError(f'{type(task).__name__}.metric_names() does not list what its '
                           f'evaluation returned: {sorted(set(val) ^ val_metrics)}.')
      writer.write(step, val)
      writer.write_images(step, result.images)
      if _improved(val[config.best_metric], loop['best_value'], config.best_mode):
        loop.update(best_step=step, best_value=val[config.best_metric], evals_since_best=0)
      else:
        loop['evals_since_best'] += 1
      logging.info('%s', writers.val_line(step, val, loop, config.best_metric))
      patience = config.early_stopping_patience
      if patience and loop['evals_since_best'] >= patience:
        logging.info('Early stopping at step %d: %s has not improved for %d evaluations '
                     '(best %.4f at step %d).', step, config.best_metric, patience,
                     loop['best_value'], loop['best_step'])
        loop['stopped_early'] = True
        stop = True
    redo_eval = False
    if (step % ckpt_every == 0 or step == total_steps or stop
        or (val is not None and loop['best_step'] == step)):
      flush_train_metrics()
      save(state)
    if val is not None and on_eval is not None:
      on_eval(step, step / per_epoch, val)
    if stop:
      if guard.requested:
        logging.info('%s: saved step %d; re-run the same command to resume.',
                     guard.requested[0], step)
      break
  flush_train_metrics()

  # ------------------------------------------- final report (best checkpoint, test)
  if guard.requested or (mode == 'train' and step < total_steps and not loop['stopped_early']):
    return None
  guard.phase = 'the final report'
  final_step = loop['best_step'] if loop['best_step'] is not None else ckpts.latest_step()
  if final_step is not None and final_step not in ckpts.steps():
    logging.warning('The best checkpoint (step %d) is missing from %s; reporting the latest '
                    '(step %d) instead.', final_step, ckpts.directory, ckpts.latest_step())
    final_step = ckpts.latest_step()
  if final_step is not None and final_step != int(state.step):
    final_step, state, _ = ckpts.restore_newest(checkpoint.abstract(state),
                                                steps=[final_step, ckpts.latest_step()])
  record = {'last_step': ckpts.latest_step(),
            # Not complete while a stopped validation evaluation is owed (--mode=eval meanwhile).
            'complete': (ckpts.latest_step() == total_steps or bool(loop['stopped_early']))
                        and loop.get('eval_interrupted') is None}
  try:
    return final.final_report(config, workdir, task, model, state, splits, evaluate, writer,
                              loop, cost, record,
                              uninterruptible=lambda: guard.saving(guard.saved_step))
  except errors.StopRequested as e:
    guard.take()
    logging.info('%s during the final report: nothing new since step %d to save; re-run the '
                 'same command to write the report.', e.signal_name, guard.saved_step)
    return None
