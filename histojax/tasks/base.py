"""The task contract: everything the train loop, the report and `--mode=predict` ask of a task.

A task turns batches into model inputs, gives the loss and the train metrics, evaluates a
whole split (each example counted once), chooses its post-processing on validation data,
writes its report sections and predicts new inputs. The loop (histojax/train.py) is the same
for every task; it calls only the members below. Optional behaviour has a default here, so a
task overrides what it does, and a misspelt override fails when its class is defined:
abstract members must exist, and `Task.__init_subclass__` rejects public names the contract
lacks (methods, properties, class attributes; a task lists its own helpers in `helpers`) and
overrides whose parameters differ from the contract's.
"""
import abc
import dataclasses
import inspect
from typing import Any, Callable, Iterator

import numpy as np


@dataclasses.dataclass
class EvalResult:
  """One split's evaluation.

  scalars: float metrics, written to metrics.jsonl as `<part>/<name>`.
  details: what the task's report sections need (confusion matrices, per-image panels, ...).
  images: name → uint8 [H, W, 3] pictures (the loop writes validation's to TensorBoard).
  postprocess: the post-processing settings these scalars were scored with (e.g. GlaS
    `object_min_size`); saved as W/postprocess.json, applied to the test parts and by predict.
  notes: sentences for the report on how the settings were chosen.
  """
  scalars: dict[str, float]
  details: dict[str, Any] = dataclasses.field(default_factory=dict)
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  postprocess: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)


def class_names(info) -> list[str]:
  """The dataset's class names, or '0', '1', ... when it has none."""
  return list(info.get('class_names') or [str(i) for i in range(info['num_classes'])])


class Task(abc.ABC):
  """Base of every task. `config` is the run's ConfigDict, `info` the dataset's info dict."""

  # Metric names plotted as train/val curves in the report (metrics.jsonl keys).
  curve_metrics: tuple[str, ...] = ('loss',)
  # Host-side per-example training transform `(example, *, epoch, index) -> example` (random
  # crops, augmentation drawn from the seed, epoch and index), or None.
  train_transform: Callable[..., dict] | None = None
  # QuPath object type of predicted objects in GeoJSON: 'annotation' (few, large, editable:
  # glands) or 'detection' (many, small: nuclei).
  object_type: str = 'annotation'
  # Public names a subclass defines beyond the contract (its own helpers, used by tests).
  helpers: tuple[str, ...] = ()

  def __init__(self, config, info):
    self.config = config
    self.num_classes = info['num_classes']
    self.class_names = class_names(info)

  # -------------------------------------------------------------------- training
  @property
  def out_channels(self) -> int:
    """Channels of the model's output (logits)."""
    return self.num_classes

  @abc.abstractmethod
  def inputs(self, batch, rng, train):
    """Batch dict (uint8 images on device) → float model input; `rng` is None unless train."""

  @abc.abstractmethod
  def loss(self, logits, batch):
    """Per-example training loss [B] (the loop adds the L2 penalty and takes the mean)."""

  @abc.abstractmethod
  def train_metrics(self, logits, batch, loss) -> dict:
    """Scalars of one training step, on device; must hold 'loss' (checked for NaN/inf)."""

  # ------------------------------------------------------------------ evaluation
  @abc.abstractmethod
  def evaluate(self, model, state, source, *, mesh, postprocess=None, process_index=0,
               process_count=1, progress=None) -> EvalResult:
    """Scores every example of `source` exactly once with the given post-processing settings
    (None: the config's); the same on every host. `source` is random access (len, [i]); its
    optional `names` attribute names example i in figures. `progress(done, total)`, when
    given, is called after each example or batch (it logs, and may raise errors.StopRequested
    to end the evaluation early)."""

  @abc.abstractmethod
  def metric_names(self) -> tuple[str, ...]:
    """The keys of `evaluate(...).scalars`, known before anything is evaluated: the names a
    config's best_metric and a sweep's metric are checked against (the loop checks each
    evaluation's keys against them)."""

  def select_on_val(self, val: EvalResult) -> EvalResult:
    """Chooses the post-processing on the validation result (never on test) and returns the
    validation result scored with that choice in `.postprocess`. Default: nothing to choose."""
    return val

  def pool_tests(self, results: list[EvalResult]) -> EvalResult | None:
    """One result over several test parts (GlaS testA + testB), or None when not poolable."""
    del results
    return None

  # ----------------------------------------------------------------------- report
  def report_sections(self, workdir, results: dict[str, EvalResult], info) -> list[str]:
    """Markdown lines after the metrics table of W/report.md."""
    del workdir, results, info
    return []

  def explain(self, model, state, source, workdir, part) -> list[str]:
    """Markdown lines with attribution figures for a few examples of `source`."""
    del model, state, source, workdir, part
    return []

  # ---------------------------------------------------------------------- predict
  def predict_reads(self, info) -> tuple[int, tuple[int, int] | None]:
    """(channels, (H, W) or None for any size) that `--mode=predict` reads inputs as."""
    del info
    return 3, None

  def region_predictor(self, model, variables, mesh) -> Callable | None:
    """Slide prediction's per-tile step: `f(image, keep=None)` maps uint8 [H, W, 3] at the
    model's working resolution (and optionally a bool [H, W] mask of the pixels worth
    predicting) to float32 [H, W, classes] probabilities, or None when `keep` leaves no window.
    None here: the task does not predict whole slides."""
    del model, variables, mesh
    return None

  @abc.abstractmethod
  def predict(self, model, variables, mesh, inputs: Iterator[tuple[str, str, np.ndarray]],
              output_dir, postprocess, options) -> None:
    """Writes predictions for `inputs` ((name, output stem, image) triples, already read)
    into `output_dir`, with the post-processing the run chose on val (W/postprocess.json).
    `options`: the predict flags, {'save_probs': bool, 'microns_per_pixel': float | None}."""

  # ------------------------------------------------------------------- the contract
  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    contract = {n for n in dir(Task) if not n.startswith('_')}
    unknown = sorted(n for n in vars(cls) if not n.startswith('_')
                     and n not in contract and n not in cls.helpers)
    if unknown:
      raise TypeError(f'{cls.__name__} defines {unknown}, which the task contract '
                      '(histojax/tasks/base.py) does not have: a misspelt hook? List public '
                      'helpers in the class attribute `helpers`.')
    for name in contract & set(vars(cls)):
      mine, theirs = vars(cls)[name], getattr(Task, name)
      if inspect.isfunction(mine) and inspect.isfunction(theirs):
        if list(inspect.signature(mine).parameters) != list(inspect.signature(theirs).parameters):
          raise TypeError(f'{cls.__name__}.{name}{inspect.signature(mine)} does not take the '
                          f'parameters of Task.{name}{inspect.signature(theirs)} '
                          '(histojax/tasks/base.py).')
