"""Does the train step fit the device? Checked on its compiled program before the first step.

`mypt_jax.train` runs this on a real accelerator (a CPU reports no allocator limit); the
preflight compiles the same shapes for slices it does not have (`preflight/programs.py`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mypt_jax.data import batching
from mypt_jax.parallel import device_memory as dm
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import train_step as ts


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs (its shards)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def train_shapes(config, mesh, hosts: int) -> list[batching.BatchShape]:
    """Every train batch shape the layout can produce, the largest (rows x length) first."""
    shapes = batching.step_shapes(config, data_shards=mesh.shape["data"] * mesh.shape["fsdp"],
                                  process_count=hosts)
    return sorted(shapes, key=lambda s: -s.rows * s.length)


def sharded_batch(shape: batching.BatchShape, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    bsh = ts.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
            for k, v in batching.abstract_batch(shape).items()}


def check_train_step(step_fn: Any, r: cfg_lib.Resolved, tx: Any, mesh,
                     capacity: int | None = None) -> str | None:
    """The preflight's check at the start of a run on a real accelerator: the jitted step,
    compiled here for its largest batch shape, against the device's allocator limit.

    None when it fits or when the backend reports no limit (CPU); else the problem, naming
    the fields that change it.
    """
    capacity = capacity or dm.device_capacity(dm.local_device(mesh))
    if capacity is None:
        return None
    shape = train_shapes(r.config, mesh, jax.process_count())[0]
    try:
        compiled = step_fn.lower(ts.abstract_state(tx, r.model_config, mesh),
                                 sharded_batch(shape, mesh)).compile()
    except Exception as e:  # noqa: BLE001
        if not dm.is_oom(e):
            raise
        return f"the train step at batch shape {shape} does not fit: {str(e).splitlines()[0]}"
    problem = dm.check(dm.from_compiled(compiled), capacity, f"the train step at batch shape {shape}")
    return problem


def program_check(mesh, capacity: int | None = None):
    """`check(kind, shape, compiled)` for `Programs`: raises ConfigError where a compiled
    train program needs more than the device holds (the preflight names the cheapest change
    that fits); None where the device reports no limit (CPU)."""
    capacity = capacity or dm.device_capacity(dm.local_device(mesh))
    if capacity is None:
        return None

    def check(kind: str, shape, compiled) -> None:
        if kind != "train":
            return
        problem = dm.check(dm.from_compiled(compiled), capacity,
                           f"the train step at batch shape {shape}")
        if problem:
            raise cfg_lib.ConfigError(
                f"remat/grad_accum_steps/mesh_fsdp: {problem}; `python -m mypt_jax.preflight "
                "--config=<this config>` names the cheapest change that fits")

    return check
