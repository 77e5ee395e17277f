"""layers.matmul: bfloat16 contractions asked for in the form that runs natively, with the
numbers (forward and both gradients) of the plain bfloat16 dot it replaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from personalize_t5x.network import layers


def _plain(a, b):
    return lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 2,)), ((), ())))


def _loss(dot):
    # a float32 parameter cast to bfloat16 inside, as DenseGeneral does
    return lambda x, k: jnp.sum(jnp.sin(dot(x, k.astype(jnp.bfloat16)).astype(jnp.float32)))


def _ulps(a, b):
    """Distance in bfloat16 units in the last place (0 where equal)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = np.maximum(np.abs(a), np.abs(b))
    ulp = np.where(scale > 0, 2.0 ** (np.floor(np.log2(np.maximum(scale, 1e-30))) - 7), 1.0)
    return np.abs(a - b) / ulp


@pytest.mark.parametrize("shape", [(64, 48, 96), (7, 5, 3)])
def test_forward_and_gradients_round_as_the_plain_bfloat16_dot(shape):
    m, k, n = shape
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(m, k), jnp.bfloat16)
    w = jnp.asarray(rng.randn(k, n) / np.sqrt(k), jnp.float32)
    fast, plain = layers.matmul(x, w.astype(jnp.bfloat16)), _plain(x, w.astype(jnp.bfloat16))
    assert fast.dtype == plain.dtype == jnp.bfloat16 and fast.shape == plain.shape
    # one rounding of a float32 sum: the two differ only where the summation order tips a
    # rounding, by one bfloat16 ulp at most
    assert _ulps(fast, plain).max() <= 1.0
    assert np.mean(np.asarray(fast, np.float32) == np.asarray(plain, np.float32)) > 0.97
    gx_fast, gw_fast = jax.grad(_loss(layers.matmul), argnums=(0, 1))(x, w)
    gx_plain, gw_plain = jax.grad(_loss(_plain), argnums=(0, 1))(x, w)
    assert gx_fast.dtype == jnp.bfloat16 and gw_fast.dtype == jnp.float32
    assert _ulps(gx_fast, gx_plain).max() <= 2.0
    assert _ulps(gw_fast, gw_plain).max() <= 2.0


def test_float32_and_mixed_inputs_take_the_plain_path_exactly():
    rng = np.random.RandomState(1)
    a, b = jnp.asarray(rng.randn(6, 4), jnp.float32), jnp.asarray(rng.randn(4, 5), jnp.float32)
    np.testing.assert_array_equal(layers.matmul(a, b), jnp.matmul(a, b))
    mixed = layers.matmul(a.astype(jnp.bfloat16), b)
    assert mixed.dtype == jnp.float32


def test_batched_matmul_and_its_gradients():
    rng = np.random.RandomState(2)
    a = jnp.asarray(rng.randn(3, 2, 8, 16), jnp.bfloat16)
    b = jnp.asarray(rng.randn(3, 2, 16, 4), jnp.bfloat16)
    assert _ulps(layers.matmul(a, b), jnp.matmul(a, b)).max() <= 1.0
    loss = lambda f: (lambda a, b: jnp.sum(f(a, b).astype(jnp.float32) ** 2))
    for fast, plain in zip(jax.grad(loss(layers.matmul), (0, 1))(a, b), jax.grad(loss(jnp.matmul), (0, 1))(a, b)):
        assert fast.shape == plain.shape and _ulps(fast, plain).max() <= 2.0


def test_dense_general_in_bfloat16_is_the_plain_contraction():
    """The T5 projection: a [batch, length, embed] input over a 2-D kernel, and an input
    over two trailing axes (the attention output)."""
    rng = np.random.RandomState(3)
    for features, axis, shape in ((32, -1, (2, 5, 16)), (16, (-2, -1), (2, 5, 4, 8))):
        dense = layers.DenseGeneral(features, axis=axis, dtype=jnp.bfloat16)
        x = jnp.asarray(rng.randn(*shape), jnp.float32)
        params = dense.init(jax.random.PRNGKey(0), x)
        got = dense.apply(params, x)
        kernel = params["params"]["kernel"].astype(jnp.bfloat16)
        n_in = len(layers._as_tuple(axis))
        want = lax.dot_general(x.astype(jnp.bfloat16), kernel.reshape(shape[-n_in:] + (features,)),
                               ((tuple(range(len(shape) - n_in, len(shape))), tuple(range(n_in))), ((), ())))
        assert got.shape == want.shape and got.dtype == jnp.bfloat16
        assert _ulps(got, want).max() <= 1.0
