"""The k-fold summary (histojax.folds) over fold workdirs, and one real 2-fold smoke run."""
import json

import pytest

from conftest import require_data
from histojax import folds


def _fold_workdir(root, fold, k, accuracy, count=100, seed=0):
  w = root / f'fold{fold}'
  w.mkdir(exist_ok=True)
  (w / 'config.json').write_text(json.dumps({'dataset': 'glas_tiles', 'seed': seed, 'data': {
      'folds': k, 'fold': fold, 'fractions': {'train': 0.6, 'val': 0.2, 'test': 0.2}}}))
  lines = [{'step': 5, 'val/accuracy': 0.1}, {'step': 9, 'test/accuracy': 0.0},
           {'step': 9, 'test/accuracy': accuracy, 'test/count': count}]
  (w / 'metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  return str(w)


def test_summary_mean_std_over_folds(tmp_path):
  dirs = [_fold_workdir(tmp_path, i, 3, acc) for i, acc in enumerate([0.6, 0.7, 0.8])]
  table = folds.summarise(dirs[::-1])
  rows = table.strip().splitlines()
  assert [r.split('|')[1].strip() for r in rows[-4:-1]] == ['0', '1', '2']
  assert '| 0.700 ± 0.100 | 300 |' in rows[-1]  # sample std; counts summed


def test_summary_refuses_incomplete_or_mixed_folds(tmp_path):
  dirs = [_fold_workdir(tmp_path, i, 3, 0.5) for i in range(2)]
  with pytest.raises(ValueError, match='folds 0..2'):
    folds.summarise(dirs)
  (tmp_path / 'fold0' / 'metrics.jsonl').write_text('{"step": 1, "val/accuracy": 0.1}\n')
  with pytest.raises(ValueError, match='no test/'):
    folds.summarise(dirs + [_fold_workdir(tmp_path, 2, 3, 0.5)])
  _fold_workdir(tmp_path, 2, 3, 0.5, seed=1)
  with pytest.raises(ValueError, match='not folds of one split.*seed'):
    folds.summarise(dirs[1:] + [str(tmp_path / 'fold2')])
  with pytest.raises(SystemExit, match='fold0'):
    folds.main([dirs[0], dirs[1], str(tmp_path / 'fold2'), '--metrics=accuracy'])


def test_two_fold_smoke_run_tests_each_patient_once(tmp_path):
  require_data('glas')
  import importlib
  from histojax import train
  from histojax.data import datasets
  tested = []
  for fold in range(2):
    config = importlib.import_module('configs.patches_cnn').get_config(f'smoke,folds=2,fold={fold}')
    config.data.max_eval_examples = None  # whole test folds, to compare their patients
    config.total_steps = 2
    parts = datasets.get_splits(config)
    assert any('fold' in n and 'Cross-validation' in n for n in parts.info['notes'])
    tested.append(set(parts.tests['test'].indices.tolist()))
    everything = len(parts.train) + len(parts.val) + len(tested[-1])
    train.train_and_evaluate(config, tmp_path / f'fold{fold}')
  assert not tested[0] & tested[1] and len(tested[0] | tested[1]) == everything
  table = folds.summarise([str(tmp_path / 'fold0'), str(tmp_path / 'fold1')])
  assert 'mean ± std' in table and 'balanced_accuracy' in table
