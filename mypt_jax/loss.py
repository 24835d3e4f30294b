"""Masked next-token cross-entropy, in float32, optionally without materialising all logits.

Losses are returned as (sum of masked per-token CE, number of masked tokens) so callers can
add them over microbatches, devices or val batches and divide once: the upstream loss of a
batch is `sum / max(count, 1)` (a token-weighted mean; a batch without targets gives 0).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def masked_ce_sums(
    logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    ce_BxT = optax.losses.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), targets_BxT
    )
    mask_BxT = mask_BxT.astype(jnp.float32)
    return jnp.sum(ce_BxT * mask_BxT), jnp.sum(mask_BxT)


def normalise(loss_sum: jax.Array, count: jax.Array) -> jax.Array:
    return loss_sum / jnp.maximum(count, 1.0)


def masked_ce(logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    return normalise(*masked_ce_sums(logits_BxTxV, targets_BxT, mask_BxT))


def chunked_ce_sums(
    hidden_BxTxC: jax.Array,
    logits_from_hidden: Callable[[jax.Array], jax.Array],
    targets_BxT: jax.Array,
    mask_BxT: jax.Array,
    chunk_size: int,
) -> tuple[jax.Array, jax.Array]:
    """The same sums, projecting `chunk_size` positions at a time.

    Each chunk is rematerialised in the backward pass, so at most one chunk's float32
    logits [B, chunk, V] is alive instead of all T positions'.
    """
    B, T, C = hidden_BxTxC.shape
    n = T // chunk_size
    h_NxBxKxC = hidden_BxTxC.reshape(B, n, chunk_size, C).swapaxes(0, 1)
    y_NxBxK = targets_BxT.reshape(B, n, chunk_size).swapaxes(0, 1)
    m_NxBxK = mask_BxT.reshape(B, n, chunk_size).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(h_BxKxC, y_BxK, m_BxK):
        return masked_ce_sums(logits_from_hidden(h_BxKxC), y_BxK, m_BxK)

    def body(carry, xs):
        s, c = chunk(*xs)
        return (carry[0] + s, carry[1] + c), None

    zero = jnp.zeros((), jnp.float32)
    (loss_sum, count), _ = jax.lax.scan(body, (zero, zero), (h_NxBxKxC, y_NxBxK, m_NxBxK))
    return loss_sum, count


def trained_positions_BxK(mask_BxT: jax.Array, k: int) -> jax.Array:
    """Per row, the indices of its first k trained (mask 1) positions, untrained ones after.

    Exact only while no row trains on more than k tokens (the trainer checks each batch).
    """
    return jnp.argsort(-mask_BxT.astype(jnp.float32), axis=1, stable=True)[:, :k]


def gather_positions(x_BxT_or_BxTxC: jax.Array, idx_BxK: jax.Array) -> jax.Array:
    if x_BxT_or_BxTxC.ndim == 3:
        return jnp.take_along_axis(x_BxT_or_BxTxC, idx_BxK[..., None], axis=1)
    return jnp.take_along_axis(x_BxT_or_BxTxC, idx_BxK, axis=1)
