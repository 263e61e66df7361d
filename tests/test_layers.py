"""histojax.models.layers against the flax layers they replace: same values, same gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from histojax.models import layers


def _random(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 28, 28, 4)])
def test_max_pool_2x2_matches_flax_values_and_gradients(shape):
  x, g = _random(shape), _random((shape[0], shape[1] // 2, shape[2] // 2, shape[3]), 1)
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), ref(x))
  # Random normal inputs have no ties, so both gradients route to the same element.
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_array_equal(grad(layers.max_pool_2x2), grad(ref))


def test_max_pool_2x2_refuses_odd_sides():
  with pytest.raises(ValueError, match='even H and W'):
    layers.max_pool_2x2(jnp.zeros((1, 7, 8, 1)))


@pytest.mark.parametrize('side', [7, 8, 25, 50])
def test_max_pool_3x3_s2_matches_flax_values_and_gradients(side):
  x = _random((2, side, side + 1, 3))
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  out = layers.max_pool_3x3_s2(x)
  np.testing.assert_array_equal(out, ref(x))
  g = _random(out.shape, 1)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_allclose(grad(layers.max_pool_3x3_s2), grad(ref), atol=1e-6)


def test_conv_transpose_2x2_matches_flax_conv_transpose():
  """Same parameter names, shapes and initial values, same output, same gradients: a
  checkpoint written with nn.ConvTranspose restores into ConvTranspose2x2 unchanged."""
  x = _random((2, 5, 6, 3))
  ref = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding='VALID')
  mine = layers.ConvTranspose2x2(4, kernel_init=nn.initializers.lecun_normal())
  v_ref, v_mine = ref.init(jax.random.key(0), x), mine.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v_ref, v_mine)
  params = jax.tree.map(lambda a: a + _random(a.shape, 2), v_ref)  # non-zero bias too
  np.testing.assert_allclose(mine.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  g = _random((2, 10, 12, 4), 3)
  grads = [jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * g), argnums=(0, 1))(params, x)
           for m in (mine, ref)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *grads)
