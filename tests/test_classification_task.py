import jax
import numpy as np
import pytest

from configs import common
from histojax.tasks import classification


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
