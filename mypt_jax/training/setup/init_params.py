"""A fresh run's first weights: random (`seed`), or an init checkpoint's adapted to this run."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import param_shardings
from mypt_jax.training.checkpoint import manager as ckpt_lib
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup.init_source import InitSource
from mypt_jax.training.step import train_step as ts


def adapt_params(params: dict, source: ModelConfig, target: ModelConfig) -> dict:
    """Init-checkpoint params -> this run's layout: tie (average, as upstream), cut wpe, cast."""
    params = dict(params)
    if target.tie_weights and not source.tie_weights:
        params["wte"] = (params["wte"].astype(jnp.float32)
                         + params.pop("lm_head_kernel").astype(jnp.float32)) / 2
    if "wpe" in params and params["wpe"].shape[0] > target.block_size:
        params["wpe"] = params["wpe"][: target.block_size]
    return jax.tree.map(lambda x: jnp.asarray(x).astype(target.param_dtype), params)


def _init_source_params(init: InitSource, mesh) -> dict:
    if init.params is not None:  # handed over on the devices (training/handoff.py)
        return init.params
    if init.kind == "run":
        abstract = ts.abstract_params(init.model_config, mesh)
        params, _ = ckpt_lib.restore_params(init.path, abstract)
        return params
    if init.kind == "upstream":
        from mypt_jax.interop import upstream

        return upstream.read_upstream(init.path).params
    from mypt_jax.interop import model_io  # our model dir (config.json + tokenizer.json + params/)

    return model_io.load_params(init.path, init.model_config, mesh=mesh)


def initial_params(r: cfg_lib.Resolved, mesh) -> tuple[ts.ModelDef, dict]:
    mc = r.model_config
    if r.init is None:
        return ts.init_model(mc, mesh, r.config.seed)
    source = _init_source_params(r.init, mesh)
    params = jax.jit(
        lambda p: adapt_params(p, r.init.model_config, mc),
        out_shardings=param_shardings(mc, mesh),
    )(source)
    return ts.model_def(mc), params
