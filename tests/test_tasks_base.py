"""histojax/tasks/base.py: the task contract refuses misspelt hooks and wrong signatures."""
import pytest

from histojax.tasks import base, classification, segmentation


def test_real_tasks_fit_the_contract():
  for task in (classification.ClassificationTask, segmentation.SegmentationTask):
    assert issubclass(task, base.Task) and not task.__abstractmethods__


@pytest.mark.parametrize('body', [
    {'select_on_vall': lambda self, val: val},   # a misspelt method
    {'curve_metric': ('loss',)},                 # a misspelt class attribute
    {'out_channel': property(lambda self: 1)},   # a misspelt property
])
def test_a_name_the_contract_lacks_is_refused(body):
  with pytest.raises(TypeError, match='misspelt hook'):
    type('Task2', (segmentation.SegmentationTask,), body)


def test_an_override_with_other_parameters_is_refused():
  with pytest.raises(TypeError, match='does not take the parameters of Task.evaluate'):
    type('Task3', (classification.ClassificationTask,),
         {'evaluate': lambda self, model, state, source, *, mesh: None})


def test_declared_helpers_are_allowed():
  task = type('Task4', (segmentation.SegmentationTask,),
              {'helpers': ('predict_image', 'postprocess_labels', 'extra'),
               'extra': lambda self: 1})
  assert task.extra
