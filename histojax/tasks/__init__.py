"""Task registry. A task says how to turn a batch into model inputs, the loss, and metrics;
the train loop (histojax/train.py) is the same for all of them."""


def get_task(config, info):
  if config.task == 'classification':
    from histojax.tasks import classification  # pylint: disable=g-import-not-at-top
    return classification.ClassificationTask(config, info)
  if config.task == 'segmentation':
    from histojax.tasks import segmentation  # pylint: disable=g-import-not-at-top
    return segmentation.SegmentationTask(config, info)
  raise ValueError(f'Unknown task {config.task!r} (config key: task).')
