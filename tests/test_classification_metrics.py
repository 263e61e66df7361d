import numpy as np
import pytest

from histojax.metrics import classification as cm

# Rows true, columns predicted. Class 2 is never predicted; class 3 never occurs at all.
MATRIX = np.array([[5, 1, 0, 0],
                   [2, 3, 0, 0],
                   [1, 1, 0, 0],
                   [0, 0, 0, 0]])


def test_metrics_against_hand_computed_values():
  m = cm.from_confusion(MATRIX)
  assert m['count'] == 13
  assert m['accuracy'] == pytest.approx(8 / 13)
  np.testing.assert_array_equal(m['support'], [6, 5, 2, 0])
  np.testing.assert_array_equal(m['predicted'], [8, 5, 0, 0])
  np.testing.assert_allclose(m['precision'], [5 / 8, 3 / 5, 0, 0])
  np.testing.assert_allclose(m['recall'], [5 / 6, 3 / 5, 0, 0])
  f1 = [2 * 5 / (2 * 5 + 3 + 1), 2 * 3 / (2 * 3 + 2 + 2), 0, 0]  # 2TP / (2TP + FP + FN)
  np.testing.assert_allclose(m['f1'], f1)
  # Balanced accuracy and macro F1 skip class 3, which is neither true nor predicted.
  assert m['balanced_accuracy'] == pytest.approx((5 / 6 + 3 / 5 + 0) / 3)
  assert m['macro_f1'] == pytest.approx(sum(f1) / 3)
  assert m['weighted_f1'] == pytest.approx((6 * f1[0] + 5 * f1[1]) / 13)
  np.testing.assert_allclose(m['true_share'], [6 / 13, 5 / 13, 2 / 13, 0])
  np.testing.assert_allclose(m['predicted_share'], [8 / 13, 5 / 13, 0, 0])
  assert m['majority_class'] == 0 and m['majority_baseline'] == pytest.approx(6 / 13)
  assert m['top_predicted_class'] == 0
  assert m['top_predicted_share'] == pytest.approx(8 / 13)
  assert set(cm.scalars(m)) >= {'accuracy', 'macro_f1', 'majority_baseline'}


def test_predicted_but_never_true_class_counts_in_macro_f1():
  m = cm.from_confusion([[3, 1], [0, 0]])
  np.testing.assert_allclose(m['f1'], [2 * 3 / 7, 0])
  assert m['macro_f1'] == pytest.approx(3 / 7)
  assert m['balanced_accuracy'] == pytest.approx(3 / 4)


def test_no_warnings_or_nan_on_degenerate_matrices():
  with np.errstate(all='raise'):
    for matrix in (np.zeros((3, 3), int), [[0, 4], [0, 0]], [[7]]):
      m = cm.from_confusion(matrix)
      assert all(np.isfinite(v).all() for v in m.values())
      cm.markdown_table(m, [str(i) for i in range(len(m['support']))])
  assert cm.bias_check(cm.from_confusion(np.zeros((2, 2), int)))[0] is False


def test_bias_check_fires_on_majority_only_predictions():
  # 60 benign, 40 malignant; the model says benign for 97 of 100.
  m = cm.from_confusion([[59, 1], [38, 2]])
  ok, message = cm.bias_check(m, class_names=['benign', 'malignant'])
  assert not ok
  assert message.startswith('WARNING')
  assert "predicts 'benign' for 97% of test examples" in message
  assert 'accuracy 0.61 vs majority-class baseline 0.60' in message
  assert 'has not learned more than the class prior' in message


def test_bias_check_fires_on_dominance_alone_and_on_accuracy_alone():
  # Baseline 0.90, accuracy 0.94 (beats it), yet 96% of predictions are class 0.
  ok, message = cm.bias_check(cm.from_confusion([[90, 0], [6, 4]]))
  assert not ok and 'predicts class 0 for 96%' in message and 'class prior' not in message
  # Spread-out predictions that are no better than the prior.
  ok, message = cm.bias_check(cm.from_confusion([[40, 20], [20, 20]]))
  assert not ok and 'class prior' in message and 'predicts class' not in message


def test_bias_check_fires_when_balanced_accuracy_is_near_chance():
  # Accuracy 0.54 beats the 0.50 baseline by more than 0.02, and no class dominates
  # (74% of predictions), but the mean per-class recall is 0.54: barely above chance.
  ok, message = cm.bias_check(cm.from_confusion([[30, 70], [22, 78]]))
  assert not ok and 'balanced accuracy 0.54 is within 0.05 of chance (0.50)' in message


def test_bias_check_passes_a_good_model():
  m = cm.from_confusion([[55, 5], [6, 34]])
  ok, message = cm.bias_check(m, class_names=['benign', 'malignant'])
  assert ok and message.startswith('OK'), message


def test_markdown_table():
  text = cm.markdown_table(cm.from_confusion(MATRIX), ['a', 'b', 'c', 'd'])
  assert '| accuracy | 0.6154 |' in text
  assert '| c | 0.0000 | 0.0000 | 0.0000 | 2 |' in text
  assert '| a | 6 | 46.2% | 8 | 61.5% |' in text
  assert 'nan' not in text.lower()
  with pytest.raises(ValueError):
    cm.markdown_table(cm.from_confusion(MATRIX), ['a'])
