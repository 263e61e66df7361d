"""Task registry: config.task → a histojax.tasks.base.Task (the contract the train loop, the
report and predict use; the loop, histojax/train.py, is the same for every task)."""


def get_task(config, info):
  if config.task == 'classification':
    from histojax.tasks import classification  # pylint: disable=g-import-not-at-top
    return classification.ClassificationTask(config, info)
  if config.task == 'segmentation':
    from histojax.tasks import segmentation  # pylint: disable=g-import-not-at-top
    return segmentation.SegmentationTask(config, info)
  raise ValueError(f'Unknown task {config.task!r} (config key: task).')
