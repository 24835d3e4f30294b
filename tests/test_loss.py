import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mypt_jax.model import loss


def _ce(logits, targets, mask):
    # The fused head with an identity projection: its logits are `logits` itself.
    V = logits.shape[-1]
    s, c = loss.head_ce_sums(logits, jnp.eye(V, dtype=logits.dtype), jnp.zeros(V), targets, mask)
    return loss.normalise(s, c)


def _example():
    # Position 0: uniform over 3 -> CE ln 3. Position 1: logits (0, ln 3, 0), target 1 -> ln(5/3).
    logits = jnp.array([[[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0]]])
    targets = jnp.array([[1, 1]])
    return logits, targets


def test_masked_ce_matches_hand_computed_values():
    logits, targets = _example()
    both = _ce(logits, targets, jnp.array([[1.0, 1.0]]))
    assert np.isclose(float(both), (math.log(3) + math.log(5 / 3)) / 2, atol=1e-6)  # = ln5 / 2
    first = _ce(logits, targets, jnp.array([[1.0, 0.0]]))
    assert np.isclose(float(first), math.log(3), atol=1e-6)
    second = _ce(logits, targets, jnp.array([[0.0, 1.0]]))
    assert np.isclose(float(second), math.log(5 / 3), atol=1e-6)


def test_no_masked_token_gives_zero_not_nan():
    logits, targets = _example()
    assert float(_ce(logits, targets, jnp.zeros((1, 2)))) == 0.0


def test_token_weighted_over_the_batch_not_per_row():
    # Row 0: 1 masked token, uniform over 4 (CE ln 4). Row 1: 2 tokens at p = 2/5 each.
    logits = jnp.zeros((2, 2, 4)).at[1, :, 0].set(math.log(2.0))
    targets = jnp.array([[0, 0], [0, 0]])
    mask = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    expected = (math.log(4) + 2 * math.log(5 / 2)) / 3  # not the mean of row means
    assert np.isclose(float(_ce(logits, targets, mask)), expected, atol=1e-6)


def _head_example(B=2, T=8, C=5, V=11, dtype=jnp.float32):
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    h = jax.random.normal(k1, (B, T, C)).astype(dtype)
    w = jax.random.normal(k2, (V, C))
    b = jax.random.normal(k3, (V,))
    y = jax.random.randint(k4, (B, T), 0, V)
    m = (jax.random.uniform(k5, (B, T)) > 0.4).astype(jnp.float32)
    return h, w, b, y, m


def _plain_head_loss(h, w, b, y, m):
    # The textbook path: materialise the logits, optax's cross-entropy, autodiff for the rest.
    logits = jnp.einsum("btc,vc->btv", h.astype(jnp.float32), w) + b
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


@pytest.mark.parametrize("chunk_size", [0, 2, 4, 8])
def test_fused_head_matches_plain_cross_entropy_and_its_gradients(chunk_size):
    h, w, b, y, m = _head_example()

    def fused(h_, w_, b_):
        return loss.normalise(*loss.head_ce_sums(h_, w_, b_, y, m, chunk_size))

    np.testing.assert_allclose(float(fused(h, w, b)), float(_plain_head_loss(h, w, b, y, m)),
                               rtol=1e-6)
    np.testing.assert_allclose(float(jax.jit(fused)(h, w, b)),
                               float(_plain_head_loss(h, w, b, y, m)), rtol=1e-6)
    want = jax.grad(_plain_head_loss, argnums=(0, 1, 2))(h, w, b, y, m)
    got = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(h, w, b)
    for g_want, g_got in zip(want, got, strict=True):
        assert g_got.shape == g_want.shape and g_got.dtype == g_want.dtype
        np.testing.assert_allclose(np.array(g_got), np.array(g_want), rtol=1e-5, atol=1e-7)


def test_fused_head_gradient_scales_with_the_upstream_cotangent():
    # The backward pass scales gradients computed in the forward pass: check it really uses
    # the cotangent (here 3x the loss, and the loss inside a larger expression).
    h, w, b, y, m = _head_example()

    def fused(h_):
        s, c = loss.head_ce_sums(h_, w, b, y, m)
        return 3.0 * s / c + jnp.sum(h_ ** 2)

    def plain(h_):
        return 3.0 * _plain_head_loss(h_, w, b, y, m) + jnp.sum(h_ ** 2)

    np.testing.assert_allclose(np.array(jax.grad(fused)(h)), np.array(jax.grad(plain)(h)),
                               rtol=1e-5, atol=1e-6)


def test_fused_head_in_bfloat16_keeps_float32_loss_and_input_dtypes():
    h, w, b, y, m = _head_example(dtype=jnp.bfloat16)
    s, c = loss.head_ce_sums(h, w, b, y, m)
    assert s.dtype == jnp.float32
    np.testing.assert_allclose(float(s / c), float(_plain_head_loss(h, w, b, y, m)), rtol=2e-2)
    g_h, g_w = jax.grad(lambda h_, w_: loss.head_ce_sums(h_, w_, b, y, m)[0], (0, 1))(h, w)
    assert g_h.dtype == jnp.bfloat16 and g_w.dtype == jnp.float32


def test_fused_head_without_trained_tokens_gives_zero_loss_and_gradient():
    h, w, b, y, _ = _head_example()
    m = jnp.zeros(y.shape, jnp.float32)
    s, c = loss.head_ce_sums(h, w, b, y, m)
    assert float(s) == 0.0 and float(c) == 0.0
    g = jax.grad(lambda w_: loss.head_ce_sums(h, w_, b, y, m)[0])(w)
    assert float(jnp.abs(g).max()) == 0.0
