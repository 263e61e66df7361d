"""Classification metrics from a [true, predicted] confusion matrix, and a class-prior check.

Conventions for degenerate classes (no NaN, no numpy warnings):
- precision is 0 for a class that is never predicted, recall is 0 for a class with no true
  examples, and F1 = 2·TP / (2·TP + FP + FN) is 0 when that denominator is 0;
- balanced accuracy averages recall over classes with support > 0 (as sklearn does);
- macro F1 averages over classes that occur as a true or as a predicted label (sklearn's
  default label set): a class that is predicted but never true counts as F1 = 0, a class
  absent from both is left out;
- weighted F1 weights each class by its true support, so zero-support classes drop out.
"""
import numpy as np

from histojax.metrics import divide


def from_confusion(matrix):
  """Scalar and per-class metrics of an integer confusion matrix (rows true, columns predicted).

  Per-class entries are float64 (int64 for counts) numpy arrays of length K; scalars are
  Python floats and ints.
  """
  m = np.asarray(matrix, np.int64)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f'confusion matrix must be square, got shape {m.shape}')
  tp = np.diag(m)
  support = m.sum(1)
  predicted = m.sum(0)
  total = int(m.sum())
  precision = divide(tp, predicted)
  recall = divide(tp, support)
  f1 = divide(2 * tp, support + predicted)
  occurring = (support > 0) | (predicted > 0)
  true_share = divide(support, total)
  predicted_share = divide(predicted, total)
  return {
      'count': total,
      'accuracy': float(divide(tp.sum(), total)),
      'balanced_accuracy': float(recall[support > 0].mean()) if total else 0.0,
      'macro_f1': float(f1[occurring].mean()) if occurring.any() else 0.0,
      'weighted_f1': float(divide((f1 * support).sum(), total)),
      'precision': precision,
      'recall': recall,
      'f1': f1,
      'support': support,
      'predicted': predicted,
      'true_share': true_share,
      'predicted_share': predicted_share,
      'majority_class': int(np.argmax(support)),
      'majority_baseline': float(true_share.max()),
      'top_predicted_class': int(np.argmax(predicted)),
      'top_predicted_share': float(predicted_share.max()),
  }


def scalars(metrics):
  """The scalar entries, e.g. for metrics.jsonl."""
  return {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}


def _name(class_names, i):
  return repr(str(class_names[i])) if class_names is not None else f'class {i}'


def bias_check(metrics, margin=0.02, class_names=None, dominance=0.95, chance_margin=0.05):
  """(ok, message): does the model do better than predicting the class prior?

  Fails when accuracy does not beat the majority-class baseline by `margin`, when one class
  takes at least `dominance` of all predictions, or when balanced accuracy (mean per-class
  recall) is within `chance_margin` of chance (1 / number of classes present).
  """
  if not metrics['count']:
    return False, 'WARNING: no examples were evaluated.'
  acc, base = metrics['accuracy'], metrics['majority_baseline']
  top, share = metrics['top_predicted_class'], metrics['top_predicted_share']
  vs = (f'accuracy {acc:.2f} vs majority-class baseline {base:.2f} '
        f'(always predicting {_name(class_names, metrics["majority_class"])})')
  problems = []
  if share >= dominance:
    problems.append(f'the model predicts {_name(class_names, top)} for {share:.0%} of '
                    'test examples')
  problems.append(vs)
  if acc < base + margin:
    return False, ('WARNING: ' + '; '.join(problems) + f' — it does not beat it by {margin:.2f}'
                   ' and has not learned more than the class prior.')
  if share >= dominance:
    return False, ('WARNING: ' + '; '.join(problems) + ' — it nearly always predicts one '
                   'class; check the recall of the other classes.')
  present = int(np.sum(np.asarray(metrics['support']) > 0))
  chance, balanced = 1.0 / max(present, 1), metrics['balanced_accuracy']
  if present > 1 and balanced < chance + chance_margin:
    return False, (f'WARNING: {vs}, but balanced accuracy {balanced:.2f} is within '
                   f'{chance_margin:.2f} of chance ({chance:.2f}): averaged over classes it '
                   'barely beats guessing.')
  return True, (f'OK: {vs}; the most frequent prediction, {_name(class_names, top)}, '
                f'covers {share:.0%} of examples.')


def markdown_table(metrics, class_names):
  """Overall, per-class and true-vs-predicted distribution tables in Markdown."""
  names = [str(n) for n in class_names]
  if len(names) != len(metrics['support']):
    raise ValueError(f'{len(names)} class names for {len(metrics["support"])} classes')
  lines = ['| metric | value |', '|---|---|']
  for key, label in [('accuracy', 'accuracy'), ('balanced_accuracy', 'balanced accuracy'),
                     ('macro_f1', 'macro F1'), ('weighted_f1', 'weighted F1 (by support)'),
                     ('majority_baseline', 'majority-class baseline accuracy')]:
    lines.append(f'| {label} | {metrics[key]:.4f} |')
  lines.append(f'| examples | {metrics["count"]} |')
  lines += ['', '| class | precision | recall | F1 | support |', '|---|---|---|---|---|']
  for i, n in enumerate(names):
    lines.append(f'| {n} | {metrics["precision"][i]:.4f} | {metrics["recall"][i]:.4f} | '
                 f'{metrics["f1"][i]:.4f} | {metrics["support"][i]} |')
  lines += ['', '| class | true count | true share | predicted count | predicted share |',
            '|---|---|---|---|---|']
  for i, n in enumerate(names):
    lines.append(f'| {n} | {metrics["support"][i]} | {metrics["true_share"][i]:.1%} | '
                 f'{metrics["predicted"][i]} | {metrics["predicted_share"][i]:.1%} |')
  lines += ['', 'Precision is 0 for a never-predicted class, recall 0 for a class with no '
            'examples, and F1 0 when both are undefined.']
  return '\n'.join(lines) + '\n'
