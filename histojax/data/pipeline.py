"""Splits as in-memory arrays → grain training stream and exact, padded evaluation batches."""
import dataclasses
import logging
from typing import Iterator

import grain
import numpy as np

from histojax.data import paths


@dataclasses.dataclass
class Splits:
  train: dict[str, np.ndarray]
  val: dict[str, np.ndarray]
  test: dict[str, np.ndarray]
  info: dict  # e.g. {'num_classes': 10, 'notes': [...]}


def holdout(arrays, size, seed):
  """Seeded random hold-out of `size` examples (for sets with no grouping, like MNIST)."""
  order = np.random.default_rng(seed).permutation(len(arrays['label']))
  keep, held = np.sort(order[size:]), np.sort(order[:size])
  return ({k: v[keep] for k, v in arrays.items()}, {k: v[held] for k, v in arrays.items()})


def _subset(arrays, n):
  return arrays if n is None else {k: v[:n] for k, v in arrays.items()}


def get_splits(config) -> Splits:
  """Builds train/val/test for `config.dataset`. Test is only read by the final report."""
  if config.dataset == 'mnist':
    from histojax.data.sources import mnist  # pylint: disable=g-import-not-at-top
    tfds_dir = config.data.get('tfds_data_dir')
    load = (lambda s: mnist.load_tfds(s, tfds_dir)) if tfds_dir else mnist.load
    train, val = holdout(load('train'), config.data.val_size, config.seed)
    test = load('test')
    info = {'num_classes': 10, 'notes': []}
  else:
    raise paths.DataError(f'Unknown dataset {config.dataset!r} (config key: dataset).')
  return Splits(train=_subset(train, config.data.max_train_examples),
                val=_subset(val, config.data.max_eval_examples),
                test=_subset(test, config.data.max_eval_examples), info=info)


class _ArraySource:
  """Random-access source over a dict of equal-length arrays (a grain RandomAccessDataSource)."""

  def __init__(self, arrays):
    self._arrays = arrays
    self._len = len(next(iter(arrays.values())))

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    return {k: v[index] for k, v in self._arrays.items()}


def train_stream(arrays, *, global_batch, seed, process_index=0, process_count=1,
                 workers=0) -> grain.DatasetIterator:
  """Endless, seeded, reshuffled-every-epoch stream of this host's share of each batch.

  The iterator's position is checkpointable (`get_state`/`set_state`), so a resumed run sees
  exactly the batches an uninterrupted one would.
  """
  if global_batch % process_count:
    raise ValueError(f'batch_size {global_batch} is not divisible by {process_count} hosts.')
  n = len(next(iter(arrays.values())))
  if n < global_batch:
    raise ValueError(f'Training split has {n} examples, fewer than batch_size {global_batch}.')
  ds = grain.MapDataset.source(_ArraySource(arrays)).shuffle(seed=seed).repeat(None)
  ds = ds.batch(global_batch, drop_remainder=True)
  local = global_batch // process_count
  ds = ds.map(lambda b: {k: v[process_index * local:(process_index + 1) * local]
                         for k, v in b.items()})
  it = ds.to_iter_dataset()
  if workers:
    it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=workers))
  return iter(it)


def eval_batches(arrays, *, global_batch, process_index=0, process_count=1
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's part of each padded global batch, with a 0/1 `mask`.

  Every example appears in exactly one batch with mask 1; padding rows have mask 0. All hosts
  yield the same number of batches, so collective eval steps stay in lockstep.
  """
  n = len(next(iter(arrays.values())))
  local = global_batch // process_count
  for start in range(0, n, global_batch):
    lo = start + process_index * local
    idx = np.arange(lo, lo + local)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {k: v[idx] for k, v in arrays.items()}
    batch['mask'] = valid.astype(np.float32)
    yield batch


def steps_per_epoch(n_train, global_batch):
  return max(1, n_train // global_batch)


def log_info(splits: Splits):
  for name in ('train', 'val', 'test'):
    logging.info('%s: %d examples', name, len(next(iter(getattr(splits, name).values()))))
  for note in splits.info.get('notes', []):
    logging.warning('%s', note)
