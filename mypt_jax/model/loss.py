"""Masked next-token cross-entropy in float32, fused with the vocabulary projection.

Losses are returned as (sum of masked per-token CE, number of masked tokens) so callers can
add them over microbatches, devices or val batches and divide once: the upstream loss of a
batch is `sum / max(count, 1)` (a token-weighted mean; a batch without targets gives 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mypt_jax.parallel import sharding


def normalise(loss_sum: jax.Array, count: jax.Array) -> jax.Array:
    return loss_sum / jnp.maximum(count, 1.0)


def head_ce_sums(
    h_BxTxC: jax.Array,
    w_VxC: jax.Array,
    b_V: jax.Array,
    targets_BxT: jax.Array,
    mask_BxT: jax.Array,
    chunk_size: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(masked CE sum, mask count) of the logits `h @ w.T + b`, fused with their gradient.

    The matmuls run in `h`'s dtype with float32 accumulation; logits, softmax and the loss
    are float32. Under differentiation the forward pass already computes the gradients of
    the loss sum with respect to h, w and b (the loss is the last op of the step, so its
    cotangent is a scalar) and the backward pass only scales them. That keeps the [N, V]
    logits out of the residuals and lets us write the three head matmuls in layouts that
    XLA runs without transposing [N, V] arrays, and the bias gradient as a matmul (on
    XLA:CPU a column sum over [N, V] is a slow single-threaded reduction).

    `chunk_size` K > 0 projects K positions of every row at a time (a scan), so at most one
    chunk's [B, K, V] logits are alive; 0 projects all T at once.

    `mesh`: the training mesh; the head's inputs are pinned to it row-split (the custom VJP
    hides the head from XLA's sharding propagation through the gradient).
    """
    h_BxTxC, targets_BxT, mask_BxT = _pinned(h_BxTxC, targets_BxT, mask_BxT, mesh)
    loss_sum = _fused_head(h_BxTxC, w_VxC, b_V, targets_BxT, mask_BxT, chunk_size)
    return loss_sum, jnp.sum(mask_BxT)


def head_ce_rows(
    h_BxTxC: jax.Array,
    w_VxC: jax.Array,
    b_V: jax.Array,
    targets_BxT: jax.Array,
    mask_BxT: jax.Array,
    chunk_size: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    accuracy: bool = False,
) -> tuple[jax.Array, ...]:
    """Per row: (masked CE sum [B], mask count [B]); forward only, the eval's per-episode sums.
    `accuracy=True` adds (targets predicted [B], targets scored [B]): the argmax of the logits
    equals the target, counted where the mask (weight) is nonzero.

    Every token's loss is computed as in `head_ce_sums` (the same `_head_chunk`, mapped over
    rows), so a batch's sum rebuilt from its rows' sums is the batch's loss sum.
    """
    h_BxTxC, targets_BxT, mask_BxT = _pinned(h_BxTxC, targets_BxT, mask_BxT, mesh)
    B, T, C = h_BxTxC.shape
    k = chunk_size or T
    n = T // k
    xs = (h_BxTxC.reshape(B, n, k, C).swapaxes(0, 1),
          targets_BxT.reshape(B, n, k).swapaxes(0, 1), mask_BxT.reshape(B, n, k).swapaxes(0, 1))

    def row(h_KxC, y_K, m_K):
        loss = _head_chunk(h_KxC, w_VxC, b_V, y_K, m_K, False)
        if not accuracy:
            return (loss,)
        scored_K = m_K != 0
        hit_K = jnp.argmax(_chunk_logits(h_KxC, w_VxC, b_V), axis=-1) == y_K
        return loss, jnp.sum(hit_K & scored_K, dtype=jnp.float32), jnp.sum(scored_K, dtype=jnp.float32)

    rows = jax.vmap(row)
    zeros = tuple(jnp.zeros((B,), jnp.float32) for _ in range(3 if accuracy else 1))
    sums = jax.lax.scan(lambda acc, x: (tuple(a + r for a, r in zip(acc, rows(*x), strict=True)),
                                        None), zeros, xs)[0]
    return (sums[0], jnp.sum(mask_BxT, axis=-1), *sums[1:])


def _pinned(h_BxTxC, targets_BxT, mask_BxT, mesh):
    """The head's inputs pinned row-split to the mesh, the mask as float32."""
    h_BxTxC = sharding.constrain(h_BxTxC, ("act_batch", "act_seq", "act_embed"), mesh)
    targets_BxT, mask_BxT = (sharding.constrain(x, ("act_batch", "act_seq"), mesh)
                             for x in (targets_BxT, mask_BxT))
    return h_BxTxC, targets_BxT, mask_BxT.astype(jnp.float32)


def _chunk_logits(h_NxC, w_VxC, b_V):
    """float32 logits; the matmul in h's dtype with float32 accumulation."""
    f32 = jnp.float32
    return (jnp.einsum("nc,vc->nv", h_NxC, w_VxC.astype(h_NxC.dtype), preferred_element_type=f32)
            + b_V.astype(f32))


def _head_chunk(h_NxC, w_VxC, b_V, y_N, m_N, with_grads: bool):
    f32 = jnp.float32
    w_VxC = w_VxC.astype(h_NxC.dtype)
    logits_NxV = _chunk_logits(h_NxC, w_VxC, b_V)
    max_Nx1 = jnp.max(logits_NxV, axis=-1, keepdims=True)
    exp_NxV = jnp.exp(logits_NxV - max_Nx1)
    sum_Nx1 = jnp.sum(exp_NxV, axis=-1, keepdims=True)
    target_N = jnp.take_along_axis(logits_NxV, y_N[:, None], axis=-1)[:, 0]
    lse_N = (jnp.log(sum_Nx1) + max_Nx1)[:, 0]
    loss_sum = jnp.sum((lse_N - target_N) * m_N)
    if not with_grads:
        return loss_sum
    # d loss_sum / d logits = mask * (softmax - one_hot(target))
    hit_NxV = jnp.arange(logits_NxV.shape[-1], dtype=y_N.dtype) == y_N[:, None]
    g_NxV = (exp_NxV * (m_N[:, None] / sum_Nx1) - jnp.where(hit_NxV, m_N[:, None], 0.0))
    g_NxV = g_NxV.astype(h_NxC.dtype)
    dh_NxC = jnp.einsum("nv,vc->nc", g_NxV, w_VxC, preferred_element_type=f32)
    dw_CxV = jnp.einsum("nc,nv->cv", h_NxC, g_NxV, preferred_element_type=f32)
    db_V = jnp.einsum("n,nv->v", jnp.ones(g_NxV.shape[:1], g_NxV.dtype), g_NxV,
                      preferred_element_type=f32)
    return loss_sum, dh_NxC, dw_CxV, db_V


def _head_scan(h_BxTxC, w_VxC, b_V, y_BxT, m_BxT, chunk_size: int, with_grads: bool):
    B, T, C = h_BxTxC.shape
    V = w_VxC.shape[0]
    k = chunk_size or T
    n = T // k
    xs = (h_BxTxC.reshape(B, n, k, C).swapaxes(0, 1),
          y_BxT.reshape(B, n, k).swapaxes(0, 1),
          m_BxT.reshape(B, n, k).swapaxes(0, 1))

    def flat(h_BxKxC, y_BxK, m_BxK):
        return h_BxKxC.reshape(B * k, C), y_BxK.reshape(-1), m_BxK.reshape(-1)

    if not with_grads:
        def body_loss(acc, x):
            h_NxC, y_N, m_N = flat(*x)
            return acc + _head_chunk(h_NxC, w_VxC, b_V, y_N, m_N, False), None

        return jax.lax.scan(body_loss, jnp.zeros((), jnp.float32), xs)[0]

    def body(acc, x):
        h_NxC, y_N, m_N = flat(*x)
        loss_sum, dh_NxC, dw_CxV, db_V = _head_chunk(h_NxC, w_VxC, b_V, y_N, m_N, True)
        acc = (acc[0] + loss_sum, acc[1] + dw_CxV, acc[2] + db_V)
        return acc, dh_NxC.reshape(B, k, C)

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((C, V), jnp.float32), jnp.zeros((V,), jnp.float32))
    (loss_sum, dw_CxV, db_V), dh_NxBxKxC = jax.lax.scan(body, zeros, xs)
    dh_BxTxC = dh_NxBxKxC.swapaxes(0, 1).reshape(B, T, C)
    return loss_sum, (dh_BxTxC, dw_CxV.T, db_V)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fused_head(h_BxTxC, w_VxC, b_V, y_BxT, m_BxT, chunk_size):
    return _head_scan(h_BxTxC, w_VxC, b_V, y_BxT, m_BxT, chunk_size, False)


def _fused_head_fwd(h_BxTxC, w_VxC, b_V, y_BxT, m_BxT, chunk_size):
    loss_sum, grads = _head_scan(h_BxTxC, w_VxC, b_V, y_BxT, m_BxT, chunk_size, True)
    dtypes = (h_BxTxC.dtype, w_VxC.dtype, b_V.dtype)
    return loss_sum, tuple(g.astype(d) for g, d in zip(grads, dtypes, strict=True))


def _fused_head_bwd(chunk_size, grads, g_loss):
    dh, dw, db = (g_loss.astype(x.dtype) * x for x in grads)
    return dh, dw, db, None, None


_fused_head.defvjp(_fused_head_fwd, _fused_head_bwd)


def gather_positions(x_BxT_or_BxTxC: jax.Array, idx_BxK: jax.Array) -> jax.Array:
    if x_BxT_or_BxTxC.ndim == 3:
        return jnp.take_along_axis(x_BxT_or_BxTxC, idx_BxK[..., None], axis=1)
    return jnp.take_along_axis(x_BxT_or_BxTxC, idx_BxK, axis=1)


def gather_flat(x_BxTxC: jax.Array, idx_BxK: jax.Array, groups: int) -> jax.Array:
    """[B, K, C] rows of `x` picked by a flat head's index: each of `groups` blocks of rows (a
    data shard's, so the gather stays on its device) is laid end to end and indexed as one."""
    B, T, C = x_BxTxC.shape
    K = idx_BxK.shape[1]
    x_GxMxC = x_BxTxC.reshape(groups, B // groups * T, C)
    idx_GxN = idx_BxK.reshape(groups, B // groups * K)
    return jnp.take_along_axis(x_GxMxC, idx_GxN[..., None], axis=1).reshape(B, K, C)
