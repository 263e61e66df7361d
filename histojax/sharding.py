"""Mesh, host batch → global array, replicated state. Data parallel over axis "data"."""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def make_mesh(config) -> jax.sharding.Mesh:
  """config.mesh = [('data', -1)]: one data axis over every device of every host."""
  (name, size), = config.mesh
  size = jax.device_count() if size == -1 else size
  return jax.make_mesh((size,), (name,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh):
  return NamedSharding(mesh, P('data'))


def replicated(mesh):
  return NamedSharding(mesh, P())


def to_global(mesh, local_batch: dict[str, np.ndarray]):
  """This host's rows of a global batch → global jax.Arrays sharded over "data"."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def check_batch(global_batch, mesh, what='batch_size'):
  if global_batch % mesh.size:
    raise ValueError(f'{what}={global_batch} is not divisible by the {mesh.size} devices.')
