import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from histojax.data import pipeline
from histojax.tasks import base, classification


def _task(**overrides):
  config = common.base_config()
  config.update(overrides)
  return classification.ClassificationTask(config, {'num_classes': 3})


def test_center_crop_takes_the_middle_of_every_input():
  images = np.arange(2 * 7 * 6 * 3, dtype=np.uint8).reshape(2, 7, 6, 3)
  task = _task(data={'center_crop': 4, 'mean': (0.0,), 'std': (1.0,)})
  x = np.asarray(task.inputs({'image': images}, None, train=False))
  np.testing.assert_array_equal(x * 255, images[:, 1:5, 1:5].astype(np.float32))
  np.testing.assert_array_equal(task.crop(images[0]), images[0, 1:5, 1:5])
  assert _task().crop(images) is images
  with pytest.raises(ValueError, match='data.center_crop'):
    _task(data={'center_crop': 8}).crop(images)


def test_label_smoothing_trains_on_soft_targets_and_reports_plain_cross_entropy():
  logits = jax.random.normal(jax.random.key(0), (5, 3))
  batch = {'label': np.array([0, 1, 2, 1, 0], np.int32), 'mask': np.ones(5, bool)}
  log_p = np.asarray(jax.nn.log_softmax(logits))
  plain = -log_p[np.arange(5), batch['label']]
  smooth = 0.9 * plain - 0.1 * log_p.mean(-1)   # (1-a) onehot + a/3 on each class
  np.testing.assert_allclose(_task().loss(logits, batch), plain, rtol=1e-5)
  task = _task(label_smoothing=0.1)
  np.testing.assert_allclose(task.loss(logits, batch), smooth, rtol=1e-5)
  metrics = task.eval_output(logits, batch).compute()
  np.testing.assert_allclose(metrics['loss'], plain.mean(), rtol=1e-5)


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


def test_report_has_tile_and_image_confusion_pngs(tmp_path):
  task = classification.ClassificationTask(common.base_config(),
                                           {'num_classes': 2, 'num_images': 4})
  tiles, images = np.array([[50, 10], [5, 35]]), np.array([[2, 0], [1, 1]])
  result = base.EvalResult({}, {'tiles': tiles, 'images': images})
  lines = task.report_sections(tmp_path, {'val': result, 'test': result}, {})
  for png in ('confusion_test.png', 'confusion_test_images.png'):
    assert f'(plots/{png})' in '\n'.join(lines) and (tmp_path / 'plots' / png).stat().st_size
