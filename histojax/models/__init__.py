"""Model registry: config.model.name → flax linen module built from config.model."""
import jax.numpy as jnp


def get_model(config, num_classes):
  kwargs = dict(config.model)
  name = kwargs.pop('name')
  dtype = jnp.dtype(config.dtype)
  if name == 'cnn':
    from histojax.models import cnn  # pylint: disable=g-import-not-at-top
    return cnn.CNN(num_classes=num_classes, dtype=dtype, **kwargs)
  if name == 'unet':
    from histojax.models import unet  # pylint: disable=g-import-not-at-top
    return unet.UNet(num_classes=num_classes, dtype=dtype, **kwargs)
  if name == 'resnet18':
    from histojax.models import resnet  # pylint: disable=g-import-not-at-top
    return resnet.ResNet18(num_classes=num_classes, dtype=dtype, **kwargs)
  raise ValueError(f'Unknown model {name!r} (config key: model.name).')


def apply(model, state, x, train=False):
  """The model's output for `x` with the params and BatchNorm statistics of `state` (a
  TrainState or anything with .params and .batch_stats); inference mode unless `train`."""
  return model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                     train=train)
