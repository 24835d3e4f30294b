"""The parameter table of the GPT: every parameter's name, shape, logical axes and init.

One table (`param_specs`) for both the module (transformer.py builds its variables from it) and
everything that needs shapes or shardings without building a model (config checks, the
converter, restore targets). Logical axis names are not attached as variable metadata
because annotated variables need a mesh at creation time in flax 0.12 (eager sharding);
`param_shardings(model, mesh)` turns the table into shardings via `sharding.logical_to_spec`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from mypt_jax.parallel import sharding

if TYPE_CHECKING:
    from mypt_jax.model.config import ModelConfig

_INIT_STD = 0.02


def param_specs(cfg: ModelConfig) -> dict[str, dict[str, tuple[tuple[int, ...], tuple, str]]]:
    """{group: {name: (shape, logical_axes, init)}}; group "" = top level, "blocks" = stacked."""
    L, C, V, F = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.mlp_hidden
    top: dict[str, tuple] = {"wte": ((V, C), ("vocab", "embed"), "normal")}
    if cfg.pos_encoding == "learned":
        top["wpe"] = ((cfg.block_size, C), (None, "embed"), "normal")
    blocks: dict[str, tuple] = {}

    def norm(prefix: str, group: dict, lead: tuple[int, ...], lead_axes: tuple) -> None:
        group[f"{prefix}_scale"] = (lead + (C,), lead_axes + ("embed",), "ones")
        if cfg.norm_type == "layernorm":
            group[f"{prefix}_bias"] = (lead + (C,), lead_axes + ("embed",), "zeros")

    layer, layer_axes = (L,), ("layers",)
    norm("ln1", blocks, layer, layer_axes)
    blocks["qkv_kernel"] = ((L, C, 3 * C), ("layers", "embed", "heads"), "normal")
    if cfg.bias:
        blocks["qkv_bias"] = ((L, 3 * C), ("layers", "heads"), "zeros")
    blocks["proj_kernel"] = ((L, C, C), ("layers", "heads", "embed"), "normal")
    if cfg.bias:
        blocks["proj_bias"] = ((L, C), ("layers", "embed"), "zeros")
    norm("ln2", blocks, layer, layer_axes)
    if cfg.mlp_type == "gelu":
        blocks["fc_kernel"] = ((L, C, F), ("layers", "embed", "mlp"), "normal")
        blocks["fc_bias"] = ((L, F), ("layers", "mlp"), "zeros")
        blocks["out_kernel"] = ((L, F, C), ("layers", "mlp", "embed"), "normal_scaled")
        blocks["out_bias"] = ((L, C), ("layers", "embed"), "zeros")
    else:
        blocks["gate_kernel"] = ((L, C, F), ("layers", "embed", "mlp"), "normal")
        blocks["up_kernel"] = ((L, C, F), ("layers", "embed", "mlp"), "normal")
        blocks["down_kernel"] = ((L, F, C), ("layers", "mlp", "embed"), "normal_scaled")
    norm("ln_f", top, (), ())
    if not cfg.tie_weights:
        top["lm_head_kernel"] = ((V, C), ("vocab", "embed"), "normal")
    top["lm_head_bias"] = ((V,), ("vocab",), "zeros")
    return {"": top, "blocks": blocks}


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """Pure-dict tree of parameter shapes, shaped like `nnx.state(model, nnx.Param)`."""
    specs = param_specs(cfg)
    out: dict[str, Any] = {k: v[0] for k, v in specs[""].items()}
    out["blocks"] = {k: v[0] for k, v in specs["blocks"].items()}
    return out


def param_logical_axes(cfg: ModelConfig) -> dict[str, Any]:
    """Pure-dict tree of logical axis names per parameter dimension (one source of truth)."""
    specs = param_specs(cfg)
    out: dict[str, Any] = {k: v[1] for k, v in specs[""].items()}
    out["blocks"] = {k: v[1] for k, v in specs["blocks"].items()}
    return out


def param_shardings(model_or_state: Any, mesh: jax.sharding.Mesh, config: ModelConfig | None = None):
    """NamedShardings for every parameter, via `sharding.LOGICAL_AXIS_RULES`.

    Given a GPT (or an `nnx.State` of its params) returns an `nnx.State` of the same structure
    whose leaves are shardings, usable as `jax.jit(out_shardings=...)` / `jax.device_put`.
    Given a ModelConfig returns the pure nested dict.
    """
    if isinstance(model_or_state, nnx.Module):  # a GPT
        config, state = model_or_state.config, nnx.state(model_or_state, nnx.Param)
    elif isinstance(model_or_state, nnx.State):
        state = model_or_state
        if config is None:
            raise ValueError("param_shardings(state, mesh) needs config=")
    else:  # a ModelConfig
        config, state = model_or_state, None
    axes = param_logical_axes(config)
    pure = jax.tree.map(
        lambda names: sharding.named_sharding(mesh, names), axes,
        is_leaf=lambda x: isinstance(x, tuple),
    )
    if state is None:
        return pure
    out = jax.tree.map(lambda x: x, state)  # a copy we may overwrite
    nnx.replace_by_pure_dict(out, pure)
    return out


def init_param(key: jax.Array, shape: tuple[int, ...], init: str, cfg: ModelConfig) -> jax.Array:
    dtype = jnp.dtype(cfg.param_dtype)
    if init == "ones":
        return jnp.ones(shape, dtype)
    if init == "zeros":
        return jnp.zeros(shape, dtype)
    # Upstream HEAD init: N(0, 0.02); MLP output projections 0.02/sqrt(2 n_layer).
    std = _INIT_STD / math.sqrt(2 * cfg.n_layer) if init == "normal_scaled" else _INIT_STD
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
