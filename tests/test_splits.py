"""histojax/data/splits.py: group-aware splits, k-fold, leakage refusal."""
import warnings

import numpy as np
import pytest

from conftest import crc_records, glas_records, require_data
from histojax.data import paths, splits
from histojax.data.sources import crchisto


_glas, _crc = glas_records, crc_records


def test_group_split_disjoint_deterministic_stratified():
  rng = np.random.default_rng(0)
  groups = np.repeat([f'img{i}' for i in range(40)], rng.integers(5, 30, 40))
  labels = np.array([int(g[3:]) % 2 for g in groups])
  split = splits.group_split(groups, labels, (0.6, 0.2, 0.2), seed=3)
  splits.check_disjoint(split, groups)
  assert sum(len(v) for v in split.values()) == len(groups)
  assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(groups)))
  for name, frac in (('train', 0.6), ('val', 0.2), ('test', 0.2)):
    assert abs(len(split[name]) / len(groups) - frac) < 0.05
    assert set(labels[split[name]]) == {0, 1}  # both classes in every split
  again = splits.group_split(groups, labels, (0.6, 0.2, 0.2), seed=3)
  assert all(np.array_equal(split[k], again[k]) for k in split)
  other = splits.group_split(groups, labels, (0.6, 0.2, 0.2), seed=4)
  assert any(not np.array_equal(split[k], other[k]) for k in split)
  # Item order does not change which groups go where.
  perm = rng.permutation(len(groups))
  shuffled = splits.group_split(groups[perm], labels[perm], (0.6, 0.2, 0.2), seed=3)
  assert {k: set(groups[perm][v]) for k, v in shuffled.items()} == \
         {k: set(groups[v]) for k, v in split.items()}
  with pytest.raises(paths.DataError, match='in both'):
    splits.check_disjoint({'train': [0], 'test': [1]}, ['a', 'a'])


def test_group_kfold_tests_every_group_once():
  rng = np.random.default_rng(1)
  groups = np.repeat([f'patient{i}' for i in range(16)], rng.integers(20, 300, 16))
  labels = np.array([int(g[7:]) % 3 == 0 for g in groups], np.int64)
  fractions = {'train': 0.6, 'val': 0.2, 'test': 0.2}
  tested = []
  for fold in range(4):
    split = splits.group_kfold(groups, labels, folds=4, fold=fold, fractions=fractions, seed=0)
    splits.check_disjoint(split, groups)
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(groups)))
    assert len(split['val']) > 0 and len(split['train']) > len(split['val'])
    # val : train over the non-test items follows 0.2 : 0.6 as closely as whole groups allow
    assert abs(len(split['val']) / (len(split['val']) + len(split['train'])) - 0.25) < 0.1
    tested.append(set(groups[split['test']]))
    again = splits.group_kfold(groups, labels, 4, fold, fractions, seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)
  assert all(not a & b for i, a in enumerate(tested) for b in tested[i + 1:])
  assert set().union(*tested) == set(groups)  # every patient tested exactly once
  with pytest.raises(ValueError, match='data.folds, data.fold'):
    splits.group_kfold(groups, labels, folds=4, fold=4)


def test_kfold_config_arguments_and_refusals():
  import importlib
  patches = importlib.import_module('configs.patches_cnn')
  c = patches.get_config('folds=4,fold=3')
  assert (c.data.folds, c.data.fold) == (4, 3)
  with pytest.raises(ValueError, match='fold=4'):
    patches.get_config('folds=4,fold=4')
  from histojax.data import datasets
  warwick = importlib.import_module('configs.warwick_unet').get_config('smoke')
  warwick.data.folds = 4
  with pytest.raises(ValueError, match='data.folds: dataset glas'):
    datasets.get_splits(warwick)


def test_group_keys_prefer_patient():
  assert splits.group_keys(['im1', 'im2'], ['7', None]) == ['patient:7', 'image:im2']


def test_random_split_needs_allow_leakage():
  with pytest.raises(ValueError, match='allow_leakage=True'):
    splits.random_split(10)
  with pytest.warns(UserWarning, match='LEAKAGE'):
    split, note = splits.random_split(100, (0.8, 0.2), seed=1, allow_leakage=True)
  assert 'LEAKAGE' in note and [len(split['train']), len(split['val'])] == [80, 20]


def test_crchisto_nuclei_split_by_image():
  require_data('crchistophenotypes')
  groups, labels = [], []
  for r in _crc():
    _, lab, _ = crchisto.nuclei(r)
    groups += [r.group] * len(lab)
    labels += lab.tolist()
  split = splits.group_split(groups, labels, (0.7, 0.15, 0.15), seed=0)
  splits.check_disjoint(split, groups)
  images = {k: {groups[i] for i in v} for k, v in split.items()}
  assert not (images['train'] & images['val'] or images['train'] & images['test'] or
              images['val'] & images['test'])
  assert sum(len(v) for v in images.values()) == 100
  assert abs(len(split['train']) / len(groups) - 0.7) < 0.05


def test_glas_val_split_by_patient():
  require_data('glas')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    train, val = splits.glas_val_split(_glas(), val_fraction=0.2, seed=0)
  assert len(train) + len(val) == 85 and all(r.split == 'train' for r in train + val)
  assert not {r.patient for r in train} & {r.patient for r in val}
  assert 10 <= len(val) <= 25
  assert {r.grade for r in val} == {'benign', 'malignant'}
  assert [r.name for r in splits.glas_val_split(_glas(), 0.2, seed=0)[1]] == [r.name for r in val]
