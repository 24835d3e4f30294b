import math

import jax
import jax.numpy as jnp
import numpy as np

from mypt_jax import loss


def _example():
    # Position 0: uniform over 3 -> CE ln 3. Position 1: logits (0, ln 3, 0), target 1 -> ln(5/3).
    logits = jnp.array([[[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0]]])
    targets = jnp.array([[1, 1]])
    return logits, targets


def test_masked_ce_matches_hand_computed_values():
    logits, targets = _example()
    both = loss.masked_ce(logits, targets, jnp.array([[1.0, 1.0]]))
    assert np.isclose(float(both), (math.log(3) + math.log(5 / 3)) / 2, atol=1e-6)  # = ln5 / 2
    first = loss.masked_ce(logits, targets, jnp.array([[1.0, 0.0]]))
    assert np.isclose(float(first), math.log(3), atol=1e-6)
    second = loss.masked_ce(logits, targets, jnp.array([[0.0, 1.0]]))
    assert np.isclose(float(second), math.log(5 / 3), atol=1e-6)


def test_no_masked_token_gives_zero_not_nan():
    logits, targets = _example()
    assert float(loss.masked_ce(logits, targets, jnp.zeros((1, 2)))) == 0.0


def test_token_weighted_over_the_batch_not_per_row():
    # Row 0: 1 masked token, uniform over 4 (CE ln 4). Row 1: 2 tokens at p = 2/5 each.
    logits = jnp.zeros((2, 2, 4)).at[1, :, 0].set(math.log(2.0))
    targets = jnp.array([[0, 0], [0, 0]])
    mask = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    expected = (math.log(4) + 2 * math.log(5 / 2)) / 3  # not the mean of row means
    assert np.isclose(float(loss.masked_ce(logits, targets, mask)), expected, atol=1e-6)


def test_bf16_logits_are_upcast():
    logits, targets = _example()
    out = loss.masked_ce(logits.astype(jnp.bfloat16), targets, jnp.ones((1, 2)))
    assert out.dtype == jnp.float32


def test_chunked_equals_full():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(k1, (2, 8, 5))
    w = jax.random.normal(k2, (5, 11))
    y = jax.random.randint(k3, (2, 8), 0, 11)
    m = (jax.random.uniform(k4, (2, 8)) > 0.4).astype(jnp.float32)

    def project(h_):
        return h_ @ w

    full = loss.masked_ce_sums(project(h), y, m)
    chunked = loss.chunked_ce_sums(h, project, y, m, chunk_size=2)
    np.testing.assert_allclose(np.array(full), np.array(chunked), rtol=1e-5)
    g_full = jax.grad(lambda h_: loss.normalise(*loss.masked_ce_sums(project(h_), y, m)))(h)
    g_chunk = jax.grad(lambda h_: loss.normalise(*loss.chunked_ce_sums(h_, project, y, m, 4)))(h)
    np.testing.assert_allclose(np.array(g_full), np.array(g_chunk), rtol=1e-5, atol=1e-7)
