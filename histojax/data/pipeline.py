"""Splits (histojax/data/datasets.py) → a grain training stream (host augmentation, per-host
rows, resumable) and exact, padded evaluation batches."""
import functools
import os
import signal
import threading
import time
from typing import Iterator

import grain
import numpy as np

from histojax import errors


def as_source(data):
  """A dict of equal-length arrays, or anything with __len__/__getitem__ giving dicts."""
  return _ArraySource(data) if isinstance(data, dict) else data


class _ArraySource:
  """Random-access source over a dict of equal-length arrays (a grain RandomAccessDataSource)."""

  def __init__(self, arrays):
    self._arrays = arrays
    self._len = len(next(iter(arrays.values())))

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    return {k: v[index] for k, v in self._arrays.items()}


class _TrainExample:
  """Host-local element j → the global example it stands for, transformed. Picklable, so it
  runs unchanged in grain worker processes.

  Global element g = (j // local) * global_batch + process_index * local + j % local, so each
  host loads and augments only its own rows of every global batch. Epoch e covers elements
  [e*n, (e+1)*n) in a permutation seeded by (seed, e); `transform(example, epoch=, index=g)`
  therefore draws are a pure function of (seed, epoch, index): a resumed run sees the same data.
  """

  def __init__(self, source, *, n_per_epoch, seed, global_batch, local, process_index,
               transform):
    self.source, self.n, self.seed = source, n_per_epoch, seed
    self.global_batch, self.local, self.process_index = global_batch, local, process_index
    self.transform = transform
    self._perm_epoch, self._perm = None, None

  def __call__(self, j):
    g = (j // self.local) * self.global_batch + self.process_index * self.local + j % self.local
    epoch, position = divmod(g, self.n)
    if self._perm_epoch != epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      self._perm_epoch = epoch
    example = dict(self.source[int(self._perm[position]) % len(self.source)])
    if self.transform is not None:
      example = self.transform(example, epoch=epoch, index=g)
    return example


_PARENT_POLL_S = 0.5


def _watch_parent(parent_pid):
  # Reparenting (to init or a subreaper) is the one reliable sign that the parent has died;
  # pid-liveness checks could be fooled by pid reuse.
  while os.getppid() == parent_pid:
    time.sleep(_PARENT_POLL_S)
  os._exit(1)  # pylint: disable=protected-access


def _exit_with_parent(parent_pid, worker_index, worker_count):
  """grain `worker_init_fn`: ends this worker within ~0.5 s of the training process's death.

  A SIGKILLed parent (the OOM killer) runs no cleanup, so without this the workers live on
  (PPID 1), and with them the resource tracker, which unlinks the shared memory only once every
  holder of its pipe (parent and workers) is gone. Not PR_SET_PDEATHSIG: that fires when the
  creating *thread* exits, and grain starts workers from its prefetch threads, which `set_state`
  (a resume) stops and replaces while the workers live on.
  """
  del worker_index, worker_count
  # Ctrl-C in a terminal signals the whole process group: the training process saves and
  # stops; a worker dying of KeyboardInterrupt mid-batch would only break that.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_watch_parent, args=(parent_pid,), name='exit-with-parent',
                   daemon=True).start()


def usable_cpus():
  """CPUs this process may run on (a container's or taskset's limit), not the machine's."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def resolve_workers(value):
  """Config key data.workers → the number of grain worker processes. 'auto': none on 2 or
  fewer usable CPUs (a worker would only take CPU time from the train step, and spawning it
  costs seconds), else half of them, at most 8. A count may come as an int or, from the
  command line, as a string ('--config.data.workers=2')."""
  if isinstance(value, str) and value.strip().lower() == 'auto':
    cpus = usable_cpus()
    return 0 if cpus <= 2 else min(cpus // 2, 8)
  if isinstance(value, str) and value.strip().isdigit():
    return int(value)
  if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
    return value
  raise errors.ConfigError(f"Config key data.workers={value!r} is neither 'auto' nor a number "
                           'of worker processes (0 loads in the training process).')


def train_stream(source, *, global_batch, seed, process_index=0, process_count=1,
                 workers=0, transform=None, repeats_per_epoch=1,
                 start_batch=0) -> grain.DatasetIterator:
  """Endless, seeded, reshuffled-every-epoch stream of this host's share of each batch,
  from batch `start_batch` on.

  An epoch visits each training example `repeats_per_epoch` times (e.g. several random crops
  per whole image). Batch b is a pure function of (seed, b), so the position to checkpoint is
  one integer (the train loop's step), valid for any number of workers or hosts.
  """
  if global_batch % process_count:
    raise ValueError(f'batch_size {global_batch} is not divisible by {process_count} hosts.')
  n = len(source) * repeats_per_epoch
  if n < global_batch:
    raise ValueError(f'Training split has {n} examples, fewer than batch_size {global_batch}.')
  local = global_batch // process_count
  make = _TrainExample(source, n_per_epoch=n, seed=seed, global_batch=global_batch,
                       local=local, process_index=process_index, transform=transform)
  ds = grain.MapDataset.range(start_batch * local, 2**62).map(make).batch(local,
                                                                       drop_remainder=True)
  it = ds.to_iter_dataset()
  if workers:
    # The workers are direct children (grain uses 'spawn') of the process iterating, which is
    # this one: they exit once it has gone, however it died.
    it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=workers),
                        worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
  return iter(it)


def eval_batches(source, *, global_batch, process_index=0, process_count=1
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's part of each padded global batch, with a 0/1 `mask`.

  Every example appears in exactly one batch with mask 1; padding rows have mask 0. All hosts
  yield the same number of batches, so collective eval steps stay in lockstep.
  """
  source = as_source(source)
  n = len(source)
  local = global_batch // process_count
  for start in range(0, n, global_batch):
    lo = start + process_index * local
    idx = np.arange(lo, lo + local)
    valid = idx < n
    rows = [source[int(i)] for i in np.where(valid, idx, 0)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch['mask'] = valid.astype(np.float32)
    yield batch


def steps_per_epoch(n_train, global_batch):
  return max(1, n_train // global_batch)


def train_examples(source, *, seed, transform, n):
  """The first n examples of the training stream as the train step sees them (augmented,
  cropped; one process, batch 1): pure in (seed, epoch, index)."""
  make = _TrainExample(source, n_per_epoch=len(source), seed=seed, global_batch=1, local=1,
                       process_index=0, transform=transform)
  return [make(j) for j in range(n)]
