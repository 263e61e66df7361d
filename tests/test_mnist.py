"""histojax/data/sources/mnist.py and datasets.holdout: counts, holdout, input errors."""
import gzip

import numpy as np
import pytest

from conftest import require_data
from histojax.data import datasets, paths
from histojax.data.sources import mnist


def test_mnist_counts_and_holdout():
  require_data('mnist')
  train, test = mnist.load('train'), mnist.load('test')
  assert train['image'].shape == (60000, 28, 28, 1) and test['image'].shape == (10000, 28, 28, 1)
  assert np.bincount(test['label']).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                 974, 1009]
  kept, held = datasets.holdout({'label': train['label'], 'i': np.arange(60000)}, 5000, 0)
  assert len(held['i']) == 5000 and not set(kept['i']) & set(held['i'])


def _copy_mnist(tmp_path, corrupt=None):
  src = require_data('mnist')
  dst = tmp_path / 'mnist'
  dst.mkdir()
  for f in src.glob('*.gz'):
    data = f.read_bytes()
    if corrupt == f.name:
      data = gzip.compress(gzip.decompress(data)[:-100])  # truncated payload, valid gzip
    elif corrupt == 'gz:' + f.name:
      data = data[: len(data) // 2]  # truncated gzip stream
    (dst / f.name).write_bytes(data)
  return tmp_path


@pytest.mark.parametrize('corrupt', ['t10k-labels-idx1-ubyte.gz', 'gz:t10k-labels-idx1-ubyte.gz'])
def test_truncated_idx_names_the_file(tmp_path, monkeypatch, corrupt):
  monkeypatch.setenv('HISTOJAX_DATA', str(_copy_mnist(tmp_path, corrupt)))
  with pytest.raises(paths.DataError, match='t10k-labels-idx1-ubyte.gz'):
    mnist.load('test')


def test_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
  (tmp_path / 'mnist').mkdir()
  monkeypatch.setenv('HISTOJAX_DATA', str(tmp_path))
  with pytest.raises(paths.DataError, match=r'never downloads data.*copy the four original IDX'):
    mnist.load('train')
