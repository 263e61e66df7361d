"""Segmentation losses and whole-image evaluation bookkeeping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from histojax.tasks import segmentation


def _config(**overrides):
  config = common.base_config()
  config.update(dict(task='segmentation', data=dict(crop_size=8),
                     inference=dict(window=(8, 8), overlap=0.25, blend='constant',
                                    window_batch=2)))
  config.update(overrides)
  return config


def _task(num_classes, loss, class_weights=None, dice_over='image'):
  config = _config(loss=loss, class_weights=class_weights, dice_over=dice_over)
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


def test_batch_dice_pools_classes_over_the_batch():
  # Image 0 holds class 1 only, image 1 class 2 only; the prediction is perfect.
  mask = jnp.zeros((2, 8, 8), jnp.int32).at[0, :4].set(1).at[1, 4:].set(2)
  logits = 20.0 * jax.nn.one_hot(mask, 3)
  per_image = _task(3, 'dice').loss(logits, {'mask': mask})
  batch = _task(3, 'dice', dice_over='batch').loss(logits, {'mask': mask})
  # Per image the absent class scores (0+1)/(0+1) = 1 only because probabilities are ~0.
  np.testing.assert_allclose(per_image, 0.0, atol=1e-4)
  np.testing.assert_allclose(batch, 0.0, atol=1e-4)
  # Half-confident everywhere: per image, each absent class is pushed down on its own image.
  soft = jnp.zeros((2, 8, 8, 3))
  per_image = _task(3, 'dice').loss(soft, {'mask': mask})
  batch = _task(3, 'dice', dice_over='batch').loss(soft, {'mask': mask})
  p = 1 / 3
  present = (2 * 32 * p + 1) / (64 * p + 32 + 1)
  absent = 1 / (64 * p + 1)
  np.testing.assert_allclose(per_image, 1 - (present + absent) / 2, rtol=1e-5)
  pooled = (2 * 32 * p + 1) / (128 * p + 32 + 1)  # each class: 32 px in 128 of the batch
  np.testing.assert_allclose(batch, [1 - pooled] * 2, rtol=1e-5)
  with pytest.raises(ValueError, match='dice_over'):
    _task(3, 'dice', dice_over='pixel')


@pytest.mark.parametrize('num_classes,loss', [(2, 'bce+dice'), (3, 'ce+dice')])
@pytest.mark.parametrize('dice_over', ['image', 'batch'])
def test_ignored_pixels_do_not_change_the_loss(num_classes, loss, dice_over):
  task = _task(num_classes, loss, dice_over=dice_over)
  rng = np.random.default_rng(0)
  mask = jnp.asarray(rng.integers(0, num_classes, (2, 8, 8)), jnp.int32).at[:, :3].set(-1)
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, task.out_channels)), jnp.float32)
  other = logits.at[:, :3].set(100.0)  # anything at the ignored pixels
  np.testing.assert_allclose(task.loss(logits, {'mask': mask}),
                             task.loss(other, {'mask': mask}), rtol=1e-6)
  # ... and the loss equals that of the valid rows alone.
  np.testing.assert_allclose(task.loss(logits, {'mask': mask}),
                             task.loss(logits[:, 3:], {'mask': mask[:, 3:]}), rtol=1e-5)
  metrics = task.train_metrics(other, {'mask': mask}, task.loss(other, {'mask': mask}))
  expected = np.mean(np.asarray(task._labels(other))[:, 3:] == np.asarray(mask)[:, 3:])
  np.testing.assert_allclose(metrics['pixel_accuracy'], expected, rtol=1e-6)


def test_object_min_size_is_chosen_on_val_and_applied_to_test():
  config = _config(loss='bce+dice', object_min_size=0, object_min_size_candidates=(4, 50, 400))
  task = segmentation.SegmentationTask(config, {'num_classes': 2, 'instance_masks': True})
  rng = np.random.default_rng(0)

  def example():
    gt = np.zeros((96, 96), np.int32)
    gt[10:40, 10:40], gt[55:90, 50:85] = 1, 2  # two glands of 900 and 1,225 px
    pred = (gt > 0).astype(np.int32)
    for y in rng.choice(np.arange(45, 94, 3), 6, replace=False):  # separate 2x2 speckles
      pred[y:y + 2, 2:4] = 1
    return {'image': np.zeros((96, 96, 3), np.uint8), 'mask': gt}, pred

  pairs = [example() for _ in range(3)]
  preds = iter([p for _, p in pairs] * 2)
  task.predict_image = lambda *args: (None, next(preds))
  source = [e for e, _ in pairs]
  val = task.evaluate(None, None, source, mesh=None)
  assert val.scalars['object_f1'] < 1.0  # min size 0 during training: speckles are objects
  chosen = task.select_on_val(val)
  # 4 keeps the 4-px speckles; 400 would also do: the smaller wins. The task is unchanged.
  assert chosen.postprocess == {'object_min_size': 50} and task.postprocess['object_min_size'] == 0
  assert chosen.scalars['object_f1'] == 1.0 and chosen.scalars['dice'] == val.scalars['dice']
  assert 'chosen on val' in chosen.notes[0]
  test = task.evaluate(None, None, source, mesh=None, postprocess=chosen.postprocess)
  assert test.scalars['object_f1'] == 1.0 and test.postprocess == chosen.postprocess


def test_detection_split_is_chosen_on_val_and_applied_to_test():
  config = _config(loss='bce', detection_split=0, detection_split_candidates=(3, 20))
  task = segmentation.SegmentationTask(config, {'num_classes': 2, 'points': True})
  rows, cols = np.indices((48, 48))
  points = np.array([(20, 16), (20, 24), (36, 38)])  # a touching pair and a lone nucleus
  pred = np.any([(rows - r) ** 2 + (cols - c) ** 2 <= 25 for r, c in points], 0)
  example = {'image': np.zeros((48, 48, 3), np.uint8), 'mask': pred.astype(np.int32),
             'points': points[:, ::-1], 'point_labels': np.zeros(3, np.int32)}
  task.predict_image = lambda *args: (None, pred.astype(np.int32))
  val = task.evaluate(None, None, [example], mesh=None)
  assert val.scalars['detection_recall'] == pytest.approx(2 / 3)  # centroids merge the pair
  chosen = task.select_on_val(val)
  # Both 3 and 20 split the pair (its two maxima are equal, so both survive any window): the
  # tie goes to the smaller.
  assert chosen.postprocess == {'detection_split': 3} and chosen.scalars['detection_f1'] == 1.0
  test = task.evaluate(None, None, [example], mesh=None, postprocess=chosen.postprocess)
  assert test.scalars['detection_f1'] == 1.0
  assert 'chosen on val' in chosen.notes[0]


def test_dice_weight_scales_the_dice_term():
  mask = jnp.zeros((2, 8, 8), jnp.int32).at[:, 2:6, 2:6].set(1)
  logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))

  def loss(weight):
    config = _config(loss='bce+dice', dice_weight=weight)
    task = segmentation.SegmentationTask(config, {'num_classes': 2})
    return np.asarray(task.loss(logits, {'mask': mask}))
  bce = np.asarray(_task(2, 'bce').loss(logits, {'mask': mask}))
  dice = np.asarray(_task(2, 'dice').loss(logits, {'mask': mask}))
  np.testing.assert_allclose(loss(0.0), bce, rtol=1e-6)
  np.testing.assert_allclose(loss(2.5), bce + 2.5 * dice, rtol=1e-6)
