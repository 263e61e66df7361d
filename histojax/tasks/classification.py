"""Image classification: softmax cross-entropy, accuracy, per-class counts."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics

from histojax.data import device_augment


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Summed [true, predicted] counts over masked examples."""
  matrix: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, logits, labels, mask, **_):
    k = logits.shape[-1]
    onehot_true = jax.nn.one_hot(labels, k) * mask[:, None]
    onehot_pred = jax.nn.one_hot(jnp.argmax(logits, -1), k)
    return cls(matrix=(onehot_true.T @ onehot_pred).astype(jnp.int32))

  def merge(self, other):
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self):
    return self.matrix


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy
  confusion: ConfusionMatrix


class ClassificationTask:
  eval_metrics = EvalMetrics
  curve_metrics = ('loss', 'accuracy')
  train_transform = None  # set for host-side augmentation (H&E patches)

  def __init__(self, config, info):
    self.num_classes = info['num_classes']
    self.mean = jnp.asarray(config.data.get('mean', (0.5,)), jnp.float32)
    self.std = jnp.asarray(config.data.get('std', (0.5,)), jnp.float32)
    self.augment = config.data.get('augment')

  def inputs(self, batch, rng, train):
    """uint8 images → normalised float32, augmented on device in training."""
    x = batch['image'].astype(jnp.float32) / 255.0
    if train and self.augment:
      x = device_augment.random_affine(rng, x, **self.augment)
    return (x - self.mean) / self.std

  def loss(self, logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])

  def train_metrics(self, logits, batch, loss):
    return {'loss': jnp.mean(loss),
            'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def eval_output(self, logits, batch):
    return EvalMetrics.single_from_model_output(
        logits=logits, labels=batch['label'], mask=batch['mask'],
        loss=self.loss(logits, batch))

  @staticmethod
  def summarize(computed):
    """Scalars for metrics.jsonl; the confusion matrix goes to the report."""
    out = {k: float(v) for k, v in computed.items() if k != 'confusion'}
    matrix = np.asarray(computed['confusion'])
    out['count'] = int(matrix.sum())
    with np.errstate(invalid='ignore', divide='ignore'):
      recall = np.diag(matrix) / matrix.sum(1)
    out['balanced_accuracy'] = float(np.nanmean(recall))
    return out, matrix

  def report_sections(self, workdir, results, info):
    from histojax import report  # pylint: disable=g-import-not-at-top
    names = info.get('class_names') or [str(i) for i in range(self.num_classes)]
    lines = []
    for part, (_, confusion) in results.items():
      if part == 'val':
        continue
      png = report.plot_confusion(workdir, confusion, names, f'confusion_{part}.png')
      lines += [f'## {part}: confusion matrix (rows: true, columns: predicted)', '',
                f'![confusion]({png.relative_to(workdir)})', '', '```',
                np.array2string(np.asarray(confusion), max_line_width=200), '```', '']
    return lines
