"""Deterministic, group-aware train/val/test splits.

Items (tiles, crops, images) carry a group key - the patient when known, else the source
image - and a group never straddles two splits, so no patient or image leaks from train into
evaluation. Splits are stratified by class where the groups allow it. A plain item-level random
split exists only behind allow_leakage=True and says why it is wrong.
"""
import collections
import warnings

import numpy as np

from histojax.data import paths

def _fractions(fractions) -> dict[str, float]:
  if fractions is None:  # the one default is the config's (configs/common.py: data.fractions)
    raise ValueError('Give the split fractions (config key data.fractions).')
  if not isinstance(fractions, dict):
    names = ('train', 'val', 'test')[:len(fractions)] if len(fractions) <= 3 else None
    if names is None:
      raise ValueError('Give more than three fractions as a dict {split name: fraction}.')
    fractions = dict(zip(names, fractions))
  fractions = {k: float(v) for k, v in fractions.items()}
  if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
    raise ValueError(f'Split fractions must be >= 0 and sum to 1, got {fractions}.')
  return fractions


def group_keys(sources, patients=None) -> list[str]:
  """Per-item group key: 'patient:<id>' where the patient is known, else 'image:<source>'."""
  patients = [None] * len(sources) if patients is None else list(patients)
  return [f'patient:{p}' if p not in (None, '') else f'image:{s}'
          for s, p in zip(sources, patients)]


def group_split(groups, labels=None, fractions=None, seed: int = 0,
                tries: int = 32) -> dict[str, np.ndarray]:
  """Splits item indices so that all items of a group land in the same split.

  groups: one hashable key per item. labels: optional class per item; groups are stratified by
  their majority label (ties to the smallest label). fractions: {name: fraction} or a
  sequence for (train, val, test), met by item count as closely as whole groups allow. Same inputs
  and seed -> same split, whatever the item order.
  Returns {name: sorted int64 item indices}.
  """
  fractions = _fractions(fractions)
  names = list(fractions)
  groups = list(groups)
  if not groups:
    return {n: np.zeros(0, np.int64) for n in names}
  members = collections.defaultdict(list)
  for i, g in enumerate(groups):
    members[g].append(i)
  # Sort keys by their text, so the result does not depend on item order or hash seeds.
  keys = sorted(members, key=lambda g: (str(type(g)), str(g)))
  if labels is None:
    strata = {None: keys}
  else:
    labels = list(labels)
    if len(labels) != len(groups):
      raise ValueError(f'{len(groups)} groups but {len(labels)} labels.')
    strata = collections.defaultdict(list)
    for g in keys:
      counts = collections.Counter(labels[i] for i in members[g])
      top = max(counts.values())
      strata[min((str(l), l) for l, c in counts.items() if c == top)[1]].append(g)
  rng = np.random.default_rng(seed)
  best, best_cost = None, np.inf
  # Whole groups rarely hit the fractions exactly: try several seeded group orders and keep
  # the one closest to the targets (still a pure function of the inputs and seed).
  for _ in range(tries):
    assigned, cost = _assign(strata, members, fractions, rng)
    if cost < best_cost - 1e-12:
      best, best_cost = assigned, cost
  assigned = best
  _fill_empty(assigned, fractions, members)
  return {n: np.array(sorted(i for g in assigned[n] for i in members[g]), np.int64)
          for n in names}


def group_kfold(groups, labels=None, folds: int = 5, fold: int = 0, fractions=None,
                seed: int = 0) -> dict[str, np.ndarray]:
  """Group k-fold cross-validation: test = fold `fold` of `folds` group-disjoint folds.

  The folds are one group_split into `folds` equal parts (stratified like group_split), so
  every fold index with the same inputs and seed sees the same folds and each group is tested
  exactly once over the k runs. Validation is carved, again by group, from the other folds in
  the ratio fractions['val'] : fractions['train'] (0.7/0.1/0.2 -> 1/8).
  Returns {'train', 'val', 'test': sorted int64 item indices}.
  """
  if folds < 2 or not 0 <= fold < folds:
    raise ValueError(f'Cross-validation needs folds >= 2 and 0 <= fold < folds (config keys '
                     f'data.folds, data.fold); got folds={folds}, fold={fold}.')
  groups = list(groups)
  parts = group_split(groups, labels, {f'fold{k}': 1 / folds for k in range(folds)}, seed)
  test = parts[f'fold{fold}']
  rest = np.setdiff1d(np.arange(len(groups)), test)
  fractions = _fractions(fractions)
  val = fractions.get('val', 0.0) / max(fractions.get('val', 0.0) + fractions['train'], 1e-12)
  inner = group_split([groups[i] for i in rest],
                      None if labels is None else [list(labels)[i] for i in rest],
                      {'train': 1 - val, 'val': val}, seed)
  return {'train': rest[inner['train']], 'val': rest[inner['val']], 'test': test}


def _assign(strata, members, fractions, rng):
  """One greedy pass: groups in a random order, each to the split furthest below its target
  (per stratum). Returns ({name: [group keys]}, squared relative error vs the targets)."""
  names = list(fractions)
  assigned, cost = {n: [] for n in names}, 0.0
  for stratum in sorted(strata, key=str):
    order = [strata[stratum][i] for i in rng.permutation(len(strata[stratum]))]
    total = sum(len(members[g]) for g in order)
    target = {n: fractions[n] * total for n in names}
    filled = dict.fromkeys(names, 0)
    for g in order:
      # Largest remaining deficit takes the group; ties go to the earlier split name.
      name = max(names, key=lambda n: (target[n] - filled[n], -names.index(n)))
      assigned[name].append(g)
      filled[name] += len(members[g])
    cost += sum((filled[n] - target[n]) ** 2 for n in names) / total
  return assigned, cost


def _fill_empty(assigned, fractions, members):
  """A split asked for (> 0) but left empty by rounding takes the smallest group of the
  split holding the most groups, when that split has groups to spare."""
  for name, frac in fractions.items():
    if frac > 0 and not assigned[name]:
      donor = max(assigned, key=lambda n: len(assigned[n]))
      if len(assigned[donor]) < 2:
        continue
      g = min(assigned[donor], key=lambda k: (len(members[k]), str(k)))
      assigned[donor].remove(g)
      assigned[name].append(g)


def check_disjoint(split: dict, groups) -> None:
  """Raises DataError if any group has items in two splits (a leak)."""
  groups = list(groups)
  owner = {}
  for name, indices in split.items():
    for i in indices:
      g = groups[int(i)]
      if owner.setdefault(g, name) != name:
        raise paths.DataError(f'Group {g!r} is in both {owner[g]!r} and {name!r}: '
                              'the split leaks between train and evaluation.')


def random_split(n: int, fractions=None, seed: int = 0,
                 allow_leakage: bool = False) -> tuple[dict[str, np.ndarray], str]:
  """Item-level random split, ignoring groups. Returns (split, note for reports).

  Tiles or crops of one image (or patient) then sit on both sides, and evaluation scores are
  inflated; so this needs allow_leakage=True and always warns.
  """
  note = (f'LEAKAGE: item-level random split of {n} items ignores source image and patient; '
          'items of one image/patient may be in train and in val/test, so evaluation scores '
          'are optimistic and not comparable with group-disjoint results.')
  if not allow_leakage:
    raise ValueError('random_split ignores groups and leaks images/patients across splits; '
                     'use group_split, or pass allow_leakage=True to accept it knowingly.')
  warnings.warn(note, stacklevel=2)
  fractions = _fractions(fractions)
  order = np.random.default_rng(seed).permutation(n)
  bounds = np.round(np.cumsum([0] + list(fractions.values())) * n).astype(int)
  split = {name: np.sort(order[bounds[k]:bounds[k + 1]]).astype(np.int64)
           for k, name in enumerate(fractions)}
  return split, note


def glas_val_split(records, val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
  """Carves a validation set from GlaS `train` records, disjoint by patient, stratified by grade.

  Returns (train records, val records), each in input order. Test records in the input are
  ignored. The official testA/testB still share patients with both parts (see
  glas.shared_patient_notes).
  """
  train = [r for r in records if r.split == 'train']
  if not train:
    raise paths.DataError('glas_val_split: no records of the official train split given.')
  split = group_split([r.patient for r in train], [r.grade for r in train],
                      {'train': 1 - val_fraction, 'val': val_fraction}, seed)
  return [train[i] for i in split['train']], [train[i] for i in split['val']]
