"""Exact evaluation counting, and MNIST input errors."""
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from conftest import require_data
from histojax.data import datasets, paths, pipeline
from histojax.data.sources import mnist
from histojax.tasks import classification


@pytest.mark.parametrize('n,batch,hosts', [(37, 16, 1), (37, 16, 2), (64, 16, 4), (5, 8, 2)])
def test_eval_batches_count_every_example_once(n, batch, hosts):
  arrays = {'index': np.arange(n), 'label': np.zeros(n, np.int32)}
  per_host = [list(pipeline.eval_batches(arrays, global_batch=batch, process_index=p,
                                         process_count=hosts)) for p in range(hosts)]
  assert len({len(b) for b in per_host}) == 1  # hosts stay in lockstep
  seen = np.concatenate([b['index'][b['mask'] > 0] for bs in per_host for b in bs])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))


def test_masked_metrics_equal_numpy_on_uneven_split():
  n, batch, k = 37, 16, 3
  rng = np.random.default_rng(0)
  labels, preds = rng.integers(0, k, n), rng.integers(0, k, n)
  task = classification.ClassificationTask(common.base_config(), {'num_classes': k})
  total = None
  for b in pipeline.eval_batches({'label': labels.astype(np.int32), 'pred': preds},
                                 global_batch=batch):
    logits = jax.nn.one_hot(b['pred'], k) * 10.0
    out = task.eval_output(logits, {k_: jnp.asarray(v) for k_, v in b.items()})
    total = out if total is None else total.merge(out)
  scalars, details = task.summarize(total.compute())
  assert scalars['count'] == n
  assert scalars['accuracy'] == pytest.approx(np.mean(labels == preds), abs=1e-7)
  expected = np.zeros((k, k), int)
  np.add.at(expected, (labels, preds), 1)
  np.testing.assert_array_equal(details['tiles'], expected)
  assert details['images'] is None and 'image_accuracy' not in scalars


@pytest.mark.parametrize('batch,hosts', [(16, 1), (16, 2), (7, 1)])
def test_image_level_metrics_equal_brute_force(batch, hosts):
  """Tiles of source images: per-image mean probability, argmax, against numpy; padding rows
  and the images absent from the split count nowhere."""
  n_images, k, n = 9, 2, 53
  rng = np.random.default_rng(1)
  image_id = rng.choice([0, 1, 2, 4, 5, 7, 8], n).astype(np.int32)  # 3 and 6: not here
  image_label = rng.integers(0, k, n_images)
  logits = rng.normal(size=(n, k)).astype(np.float32)
  task = classification.ClassificationTask(common.base_config(),
                                           {'num_classes': k, 'num_images': n_images})
  arrays = {'label': image_label[image_id].astype(np.int32), 'image_id': image_id,
            'logits': logits}
  total = None
  for p in range(hosts):  # several hosts: every host's rows, as the global batch would hold
    for b in pipeline.eval_batches(arrays, global_batch=batch, process_index=p,
                                   process_count=hosts):
      out = task.eval_output(jnp.asarray(b['logits']),
                             {k_: jnp.asarray(v) for k_, v in b.items() if k_ != 'logits'})
      total = out if total is None else total.merge(out)
  scalars, details = task.summarize(total.compute())
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  present = sorted(set(image_id))
  expected = np.zeros((k, k), int)
  for i in present:
    expected[image_label[i], probs[image_id == i].mean(0).argmax()] += 1
  np.testing.assert_array_equal(details['images'], expected)
  assert scalars['image_count'] == len(present)
  assert scalars['image_accuracy'] == pytest.approx(np.trace(expected) / len(present))
  assert scalars['count'] == n


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


def test_tta_keeps_pixelwise_predictions_and_averages_oriented_ones():
  from histojax import inference
  rng = np.random.default_rng(0)
  image = rng.random((12, 20, 3)).astype(np.float32)
  pixelwise = lambda im: np.stack([im[..., 0], 1 - im[..., 0]], -1)  # orientation-free
  for tta in inference.TTA:
    np.testing.assert_allclose(inference.with_tta(pixelwise, image, tta), pixelwise(image),
                               rtol=1e-6)
  rows = lambda im: np.broadcast_to(np.arange(im.shape[0], dtype=np.float32)[:, None, None],
                                    im.shape[:2] + (1,))  # depends on orientation
  flips = inference.with_tta(rows, image, 'flips')
  np.testing.assert_allclose(flips, rows(image))  # a left-right flip keeps the row index
  dihedral = inference.with_tta(rows, image, 'dihedral')
  # Rotations by 0/180 give the row index or its mirror, 90/270 the column index or its mirror.
  r, c = np.meshgrid(np.arange(12), np.arange(20), indexing='ij')
  expected = (2 * r + 2 * (11 - r) + 2 * c + 2 * (19 - c)) / 8
  np.testing.assert_allclose(dihedral[..., 0], expected, rtol=1e-6)
  with pytest.raises(ValueError, match='inference.tta'):
    inference.with_tta(rows, image, 'all')
