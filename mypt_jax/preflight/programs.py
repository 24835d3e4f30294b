"""What `mypt_jax.train` compiles, as programs to lower ahead of time, with their FLOPs.

One `Program` per train step batch shape (the padding-free layout's length buckets,
`batching.step_shapes`), the eval step at the largest shape, and the generation loop of
the eval prompts. Each lowers from abstract, sharded arrays (no weights, no data), so the
same programs compile for this machine or for compile-only devices (`topology.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from mypt_jax.data import batching
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import param_shapes
from mypt_jax.preflight import chips
from mypt_jax.training.compilation.fit_check import bytes_per_device, sharded_batch, train_shapes
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup import semantics
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts
from mypt_jax.training.step.freeze import Freeze


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    kind: str  # "train" | "eval" | "decode"
    model: ModelConfig
    lower: Callable[[], Any]  # -> jax.stages.Lowered
    model_flops: float  # all devices
    executed_flops: float
    hbm_bytes_model: float | None  # per device, where we model it instead of asking XLA
    resident: int  # bytes per device alive during the program but not its argument
    shape: dict[str, Any]


def bytes_global(tree: Any) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def replicated(x: Any, mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=ts.replicated(mesh))


def _attention(mc: ModelConfig, mesh, prob_dropout: bool) -> str:
    """The full-sequence attention kernel the program runs (attention.py's choice)."""
    from mypt_jax.model import attention

    return attention.resolve(mc, attention.platform_of(mesh), prob_dropout=prob_dropout)[0]


def train_program(r: cfg_lib.Resolved, mesh, shape: batching.BatchShape) -> Program:
    """The train step as `mypt_jax.train` compiles it (its hyperparameters as inputs)."""
    c, mc = r.config, r.model_config
    optimizer = optim.optimizer_spec(c)
    tx, schedule = optimizer.build()

    def lower():
        step = ts.make_train_step(ts.model_def(mc), tx, schedule, mesh, seed=c.seed,
                                  grad_accum_steps=c.grad_accum_steps,
                                  loss_chunk_size=c.loss_chunk_size, optimizer=optimizer)
        # Abstract: a compile-only client holds no arrays.
        step.hyper = {k: replicated(v, mesh) for k, v in step.hyper.items()}
        return step.lower(ts.abstract_state(tx, mc, mesh), sharded_batch(shape, mesh))

    flops = chips.train_step_flops(mc, shape.rows, shape.length, shape.positions or None)
    kernel = _attention(mc, mesh, mc.dropout > 0 and mc.attention_prob_dropout)
    return Program(f"train_step {shape} {kernel}", "train", mc, lower, flops["total"],
                   chips.remat_flops(flops, mc.remat), None, 0, dataclasses.asdict(shape))


def eval_program(r: cfg_lib.Resolved, mesh, shape: batching.BatchShape, resident: int) -> Program:
    """The per-row val loss pass the run's evals call (`val_lib.make_row_loss_step`)."""
    from mypt_jax.training.evals import val_loss as val_lib

    c, mc = r.config, r.model_config
    # An eval batch is a microbatch under the dc62a0c semantics (training/setup/semantics.py).
    shape = dataclasses.replace(shape, rows=semantics.eval_rows(c), flat=False)

    def lower():
        step = val_lib.make_row_loss_step(ts.model_def(mc), mesh,
                                             loss_chunk_size=c.loss_chunk_size,
                                             accuracy=semantics.accuracy_on(c))
        return step.lower(ts.abstract_params(mc, mesh), sharded_batch(shape, mesh))

    flops = chips.forward_flops(mc, shape.rows, shape.length, shape.positions or None)
    kernel = _attention(mc, mesh, False)
    return Program(f"eval_step {shape} {kernel}", "eval", mc, lower, flops, flops, None, resident,
                   dataclasses.asdict(shape))


def decode_program(r: cfg_lib.Resolved, mesh, resident: int,
                   capacity: int | None = None) -> Program | None:
    """The greedy generation loop of the eval prompts, as `eval_prompts.evaluate` calls it.

    In the layer loop's form the trainer gets on the mesh's devices (`decode.layers_scanned`:
    scanned on TPU/GPU); this host's backend, often CPU, would pick the unrolled one. Its
    weights in the layout the run's evals choose for devices of `capacity` bytes
    (`decode_layout.plan`): gathered over fsdp/data, the train state's params then staying
    beside them (`resident`), or the training layout.
    """
    from flax import nnx

    from mypt_jax.decoding import decode, eval_prompts
    from mypt_jax.model import attention
    from mypt_jax.training.evals import decode_layout as layout_lib

    c, mc = r.config, r.model_config
    if not c.eval_prompts_file:
        return None
    B, P, N = eval_prompts.generation_shape(eval_prompts.load_eval_prompts(c.eval_prompts_file),
                                            r.tokenizer, mc.block_size, c.eval_max_new_tokens)
    stops = len(decode.default_stop_ids(r.tokenizer))
    width = max(decode.STOP_SLOTS, -(-stops // decode.STOP_SLOTS) * decode.STOP_SLOTS)
    plan = layout_lib.plan(r, mesh, B, capacity)
    params = ts.abstract_params(mc, mesh)
    weights = params if not plan.gather else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=layout_lib.gathered_sharding(x, mesh)), params)
    if plan.gather and plan.gathered_bytes:  # the training copy stays beside the gathered one
        resident += bytes_per_device(params)

    def lower():
        mdef = ts.model_def(mc)
        graphdef, state = nnx.split(mdef.merge(weights))
        state = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else replicated(x, mesh), state)

        def sds(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=ts.replicated(mesh))

        sampling = {k: sds((), v.dtype) for k, v in decode.GREEDY.arrays().items()}
        key = jax.eval_shape(lambda: jax.random.key(0))
        return decode._generate_jit.lower(
            graphdef, state, sds((B, P), jnp.int32), sds((B,), jnp.int32), sds((), jnp.int32),
            sampling, sds((width,), jnp.int32), sds((), key.dtype), sds((), jnp.bool_),
            max_new_cap=N, penalty_window=decode.PENALTY_WINDOW,
            scan_layers=decode.layers_scanned(None, attention.platform_of(mesh)), greedy=True)

    # Every generated token reads all weights (storage dtype) and the KV cache once.
    cache = layout_lib.kv_cache_bytes(mc, B, P + N)
    steps = N + 1  # the prefill, then one step per new token
    hbm = steps * (bytes_global(params) + cache) / mesh.size
    flops = B * (P + N) * chips.decode_flops_per_token(mc, (P + N) // 2)
    return Program(f"generate {B}x{P}+{N} {plan.layout}", "decode", mc, lower, flops, flops, hbm,
                   resident, {"rows": B, "prompt": P, "new_tokens": N, "weights": plan.layout})


PROGRAM_KINDS = ("train", "eval", "decode")


def programs(r: cfg_lib.Resolved, mesh, hosts: int, kinds: tuple[str, ...] = PROGRAM_KINDS,
             largest_only: bool = False, capacity: int | None = None) -> list[Program]:
    """What `mypt_jax.train` compiles for this config (of `kinds`), largest train shape first.

    `largest_only`: only the largest train shape (the most memory a step needs). `capacity`:
    bytes per device of the target (the decode's weight layout depends on it).
    """
    shapes = train_shapes(r.config, mesh, hosts)
    if largest_only:
        shapes = shapes[:1]
    tx, _ = optim.optimizer_from_config(r.config)
    opt_resident = bytes_per_device(ts.abstract_state(tx, r.model_config, mesh).opt_state)
    out = [train_program(r, mesh, s) for s in shapes] if "train" in kinds else []
    if "eval" in kinds:
        out.append(eval_program(r, mesh, shapes[0], opt_resident))
    decode = decode_program(r, mesh, opt_resident, capacity) if "decode" in kinds else None
    if decode is not None:
        out.append(decode)
    return out


def freeze_savings(r: cfg_lib.Resolved, mesh) -> dict[str, Any] | None:
    """What freezing spares: optimizer-state bytes per device with the config's freezing and
    without it (the train step's own memory and time are in its compile, frozen or not)."""
    c = r.config
    freeze = Freeze(layers=c.freeze_layers, embeddings=c.freeze_embeddings)
    if not freeze.active:
        return None

    def opt_bytes(config: config_dict.ConfigDict) -> int:
        tx, _ = optim.optimizer_from_config(config)
        return bytes_per_device(ts.abstract_state(tx, r.model_config, mesh).opt_state)

    unfrozen = config_dict.ConfigDict(c.to_dict())
    unfrozen.freeze_layers, unfrozen.freeze_embeddings = 0, False
    trainable, total = freeze.count(param_shapes(r.model_config))
    return {"freeze_layers": freeze.layers, "freeze_embeddings": freeze.embeddings,
            "n_layer": r.model_config.n_layer, "trainable_params": trainable,
            "total_params": total, "opt_state_bytes": opt_bytes(c),
            "opt_state_bytes_unfrozen": opt_bytes(unfrozen)}
