import chex
import jax
import jax.numpy as jnp
import pytest

from histojax.models import cnn


@pytest.mark.parametrize('batch,size', [(1, 28), (3, 28), (2, 32), (5, 64)])
def test_cnn_output_shape(batch, size):
  model = cnn.CNN(num_classes=10, features=(8, 16, 16, 16, 32), dense=32)
  x = jnp.zeros((batch, size, size, 1))
  variables = model.init(jax.random.key(0), x)
  chex.assert_shape(model.apply(variables, x), (batch, 10))
  logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                          rngs={'dropout': jax.random.key(1)})
  chex.assert_shape(logits, (batch, 10))


def test_cnn_original_architecture_and_bf16():
  """The original project's model: 5 convs 32..256, pools after the 2nd and 4th (28→14→7), dense 256."""
  model = cnn.CNN(num_classes=10, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  params = variables['params']
  assert [params[f'Conv_{i}']['kernel'].shape[-1] for i in range(5)] == [32, 64, 128, 128, 256]
  assert params['Dense_0']['kernel'].shape == (256 * 7 * 7, 256)
  # Mixed precision keeps params and BatchNorm statistics in float32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, x).dtype == jnp.float32
