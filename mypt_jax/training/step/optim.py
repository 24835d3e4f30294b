"""AdamW with the upstream's clipping, schedule and weight-decay groups, as one optax chain."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mypt_jax.training.step.freeze import Freeze, trainable_only


def warmup_steps(warmup_iters: float, max_iters: int) -> int:
    """Upstream: a float strictly in (0, 1) is a fraction of max_iters, else truncated steps."""
    if isinstance(warmup_iters, float) and 0.0 < warmup_iters < 1.0:
        return int(warmup_iters * max_iters)
    return int(warmup_iters)


def lr_schedule(
    learning_rate: float,
    max_iters: int,
    warmup_iters: float,
    kind: str = "constant",
    min_lr: float = 0.0,
) -> optax.Schedule:
    """lr at update i (0-based): `lr * (i+1)/W` for i < W, then constant or cosine to min_lr."""
    return schedule_from(schedule_values(learning_rate, max_iters, warmup_iters, min_lr), kind)


def schedule_values(learning_rate: float, max_iters: int, warmup_iters: float,
                    min_lr: float = 0.0) -> dict[str, float]:
    """The numbers a schedule is made of; `RuntimeHyper` feeds them to the step as inputs."""
    W = warmup_steps(warmup_iters, max_iters)
    return {"learning_rate": learning_rate, "min_lr": min_lr,
            # in float64 here, as the constant the schedule used to fold (min_lr + span * ...)
            "lr_span": learning_rate - min_lr,
            "warmup": max(W, 1), "warmup_end": W, "decay_steps": max(max_iters - W, 1)}


def schedule_from(v: dict[str, Any], kind: str = "constant") -> optax.Schedule:
    """The schedule over `schedule_values` numbers, Python floats or traced float32 scalars."""

    def schedule(count: jax.Array) -> jax.Array:
        i = jnp.asarray(count, jnp.float32)
        warm = v["learning_rate"] * (i + 1.0) / v["warmup"]
        if kind == "cosine":
            progress = jnp.clip((i - v["warmup_end"]) / v["decay_steps"], 0.0, 1.0)
            after = v["min_lr"] + 0.5 * v["lr_span"] * (1.0 + jnp.cos(math.pi * progress))
        else:
            after = jnp.asarray(v["learning_rate"], jnp.float32)
        return jnp.where(i < v["warmup_end"], warm, after)

    return schedule


class ClipState(NamedTuple):
    pass


def clip_by_global_norm_upstream(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)); `max_norm`
    <= 0 passes the updates through unchanged (the upstream's "no clipping").

    optax.clip_by_global_norm scales by max_norm / max(norm, max_norm) instead, which
    differs slightly whenever clipping is active.
    """

    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None):
        del params
        if max_norm <= 0:
            return updates, state
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


@dataclasses.dataclass(frozen=True)
class RuntimeHyper:
    """The hyperparameters that differ between the curriculum's phases, as inputs of the step.

    Learning rate, warmup, schedule length and weight decay change from phase to phase. As
    constants folded into the compiled train step they made every phase's step a different
    program (and a persistent-cache miss); as float32 scalar inputs the four phases share one
    program per batch shape. Betas, eps and the clip norm stay constants: the phases share
    them, and optax's `1 - beta` would round differently in float32 than as a folded constant.
    """

    kind: str  # the schedule's shape ("constant" | "cosine"): program structure
    values: dict[str, float]  # schedule_values(...) and "weight_decay"

    def arrays(self) -> dict[str, jax.Array]:
        return {k: jnp.float32(v) for k, v in self.values.items()}


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer spec: built once with its own numbers (init, shardings, the host's lr), and
    rebuildable inside the step over traced `hyper` values (`make_train_step(..., optimizer=)`);
    the optimizer state has the same structure either way."""

    hyper: RuntimeHyper
    beta1: float
    beta2: float
    eps: float
    grad_clip: float
    freeze: Freeze | None

    def build(self, values: dict[str, Any] | None = None
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """Clip (upstream formula) -> AdamW with torch semantics, over `values` (traced
        scalars) or the spec's own numbers; moments take the params' dtype.

        optax.adamw is torch's AdamW: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p),
        with the decay term only where `decay_mask` is True. With `freeze`, the chain sees only
        the trainable rows (freeze.py): as upstream, frozen parameters are outside the clip
        norm and AdamW, and the decay groups of the rest are unchanged.
        """
        values = self.hyper.values if values is None else values
        schedule = schedule_from(values, self.hyper.kind)
        # The clip is in the chain whatever its value, so the optimizer state has one tree and
        # a run resumed with another `grad_clip` (1 -> 0 included) reads its checkpoints.
        parts = [clip_by_global_norm_upstream(self.grad_clip)]
        parts.append(optax.adamw(schedule, b1=self.beta1, b2=self.beta2, eps=self.eps,
                                 weight_decay=values["weight_decay"], mask=decay_mask))
        tx = optax.chain(*parts)
        if self.freeze is not None and self.freeze.active:
            return trainable_only(tx, self.freeze), schedule
        return tx, schedule


def optimizer_spec_of(
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
) -> Optimizer:
    hyper = RuntimeHyper(lr_schedule_kind, {
        **schedule_values(learning_rate, max_iters, warmup_iters, min_lr),
        "weight_decay": weight_decay})
    return Optimizer(hyper, beta1, beta2, eps, grad_clip, freeze)


def make_optimizer(**kwargs) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`optimizer_spec_of(**kwargs).build()`: the chain and its schedule (`Optimizer.build`)."""
    return optimizer_spec_of(**kwargs).build()


def optimizer_spec(config) -> Optimizer:
    return optimizer_spec_of(
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


def optimizer_from_config(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    return optimizer_spec(config).build()
