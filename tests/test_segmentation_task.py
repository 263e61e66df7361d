"""Segmentation losses and whole-image evaluation bookkeeping."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from histojax.tasks import segmentation


def _task(num_classes, loss, class_weights=None, dice_over='image'):
  config = ml_collections.ConfigDict(dict(
      seed=0, loss=loss, class_weights=class_weights, dice_over=dice_over,
      data=dict(crop_size=8, augment=None),
      inference=dict(window=(8, 8), overlap=0.25, blend='constant', window_batch=2)))
  names = ['background'] + [f'c{i}' for i in range(1, num_classes)]
  return segmentation.SegmentationTask(config, {'num_classes': num_classes, 'class_names': names})


def test_binary_losses():
  mask = jnp.zeros((2, 8, 8), jnp.int32).at[:, 2:6, 2:6].set(1)
  perfect = jnp.where(mask[..., None] > 0, 20.0, -20.0)
  task = _task(2, 'bce+dice')
  assert task.out_channels == 1
  np.testing.assert_allclose(task.loss(perfect, {'mask': mask}), 0.0, atol=1e-6)
  wrong = -perfect
  assert np.all(task.loss(wrong, {'mask': mask}) > 1.0)
  # Weighted BCE: background weight 0 leaves only the 16 foreground pixels of 64.
  logits = jnp.zeros((2, 8, 8, 1))
  weighted = _task(2, 'bce', class_weights=(0.0, 2.0)).loss(logits, {'mask': mask})
  np.testing.assert_allclose(weighted, 2.0 * np.log(2) * 16 / 64, rtol=1e-5)
  dice_only = _task(2, 'dice').loss(wrong, {'mask': mask})
  np.testing.assert_allclose(dice_only, 1 - 1 / 65, rtol=1e-4)  # 1 - (2*0+1)/(48+16+1)


def test_multiclass_losses_and_class_weights():
  mask = jnp.zeros((1, 8, 8), jnp.int32).at[:, :4].set(1).at[:, 4:, :4].set(2)
  logits = jnp.zeros((1, 8, 8, 3))  # uniform: CE = log 3 everywhere
  plain = _task(3, 'ce').loss(logits, {'mask': mask})
  np.testing.assert_allclose(plain, np.log(3), rtol=1e-5)
  weighted = _task(3, 'ce', class_weights=(0.0, 1.0, 1.0)).loss(logits, {'mask': mask})
  np.testing.assert_allclose(weighted, np.log(3) * 48 / 64, rtol=1e-5)  # background weight 0
  with pytest.raises(ValueError, match='Unknown loss'):
    _task(3, 'focal').loss(logits, {'mask': mask})
  with pytest.raises(ValueError, match=r'one per class.*3: background, c1, c2.*class_weights'):
    _task(3, 'ce', class_weights=(1.0, 2.0))
  np.testing.assert_allclose(_task(3, 'ce', class_weights=()).loss(logits, {'mask': mask}), plain)
