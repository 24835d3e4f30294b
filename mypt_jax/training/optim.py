"""AdamW with the upstream's clipping, schedule and weight-decay groups, as one optax chain."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mypt_jax.training.config import warmup_steps
from mypt_jax.training.freeze import Freeze, trainable_only


def lr_schedule(
    learning_rate: float,
    max_iters: int,
    warmup_iters: float,
    kind: str = "constant",
    min_lr: float = 0.0,
) -> optax.Schedule:
    """lr at update i (0-based): `lr * (i+1)/W` for i < W, then constant or cosine to min_lr."""
    W = warmup_steps(warmup_iters, max_iters)
    decay_steps = max(max_iters - W, 1)

    def schedule(count: jax.Array) -> jax.Array:
        i = jnp.asarray(count, jnp.float32)
        warm = learning_rate * (i + 1.0) / max(W, 1)
        if kind == "cosine":
            progress = jnp.clip((i - W) / decay_steps, 0.0, 1.0)
            after = min_lr + 0.5 * (learning_rate - min_lr) * (1.0 + jnp.cos(math.pi * progress))
        else:
            after = jnp.float32(learning_rate)
        return jnp.where(i < W, warm, after)

    return schedule


class ClipState(NamedTuple):
    pass


def clip_by_global_norm_upstream(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).

    optax.clip_by_global_norm scales by max_norm / max(norm, max_norm) instead, which
    differs slightly whenever clipping is active.
    """

    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def decay_mask(params: Any) -> Any:
    """True for the block matrices (qkv, attention proj, MLP kernels) and an untied lm_head.

    The upstream decays every parameter that is not 1-D and whose name lacks "embedding" or
    "ln": for the tied seed model that is exactly the four block matrices per layer. Layer
    params here are stacked (a leading layer axis), so the test is on the name, not ndim.
    """
    def is_decayed(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        in_blocks = any(str(getattr(p, "key", p)) == "blocks" for p in path[:-1])
        return (in_blocks and name.endswith("_kernel")) or name == "lm_head_kernel"

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(
    *,
    learning_rate: float,
    max_iters: int,
    warmup_iters: float,
    lr_schedule_kind: str = "constant",
    min_lr: float = 0.0,
    weight_decay: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-8,
    grad_clip: float = 1.0,
    freeze: Freeze | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip (upstream formula) -> AdamW with torch semantics; moments take the params' dtype.

    optax.adamw is torch's AdamW: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), with
    the decay term only where `decay_mask` is True. With `freeze`, the chain sees only the
    trainable rows (freeze.py): as upstream, frozen parameters are outside the clip norm and
    AdamW, and the decay groups of the rest are unchanged.
    """
    schedule = lr_schedule(learning_rate, max_iters, warmup_iters, lr_schedule_kind, min_lr)
    parts = []
    if grad_clip > 0:
        parts.append(clip_by_global_norm_upstream(grad_clip))
    parts.append(
        optax.adamw(
            schedule, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay, mask=decay_mask
        )
    )
    tx = optax.chain(*parts)
    if freeze is not None and freeze.active:
        return trainable_only(tx, freeze), schedule
    return tx, schedule


def optimizer_from_config(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    return make_optimizer(
        learning_rate=config.learning_rate,
        max_iters=config.max_iters,
        warmup_iters=config.warmup_iters,
        lr_schedule_kind=config.lr_schedule,
        min_lr=config.min_lr,
        weight_decay=config.weight_decay,
        beta1=config.beta1,
        beta2=config.beta2,
        eps=config.adam_eps,
        grad_clip=config.grad_clip,
        freeze=Freeze(layers=config.freeze_layers, embeddings=config.freeze_embeddings),
    )
