"""The eval-prompt decode's weight layout: gathered over the batch axes once, or left sharded.

Decoding with the FSDP training layout gathers every layer's weights again for every new
token: the compiled generation loop of a 2-layer model on an fsdp=8 CPU mesh holds 15
collectives inside the while body, and none with the weights gathered first
(tests/test_host_work.py). The gathered copy costs memory, though: it sits next to the train
state, which stays on the devices during an eval (about 3 GB more per device for the 750M
model in float32). So the run gathers only where that copy fits, and otherwise decodes
in the training layout, slower but in the memory training already fits in.

`plan` decides from the mesh, the config's train state and the device's memory; the run's
evals (`evaluator.py`, and so the compile-ahead warm-up of the generation) and the
preflight's decode program (`preflight/programs.py`) both ask it, so the preflight measures
the layout the run uses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mypt_jax.model.config import ModelConfig
from mypt_jax.training.compilation.fit_check import bytes_per_device
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts

BATCH_AXES = ("fsdp", "data")
# Share of the device kept free beside the train state, the gathered copy and the KV cache:
# the decode's own temporaries (a layer's activations, the logits), its code and the
# allocator's fragmentation.
HEADROOM = 0.10


def gathered_spec(spec: PartitionSpec) -> PartitionSpec:
    """`spec` without the batch axes; tensor-parallel splits stay (their all-reduces are the
    layout, not a per-token gather)."""
    def keep(a):
        if isinstance(a, tuple):
            return tuple(n for n in a if n not in BATCH_AXES) or None
        return None if a in BATCH_AXES else a

    return PartitionSpec(*(keep(a) for a in spec))


def gathered_sharding(x: Any, mesh) -> NamedSharding:
    return NamedSharding(mesh, gathered_spec(x.sharding.spec))


def gathered_bytes(params: Any, mesh) -> int:
    """Bytes per device a gathered copy of `params` (arrays or ShapeDtypeStructs) adds: the
    leaves whose layout changes, whole over the batch axes; 0 where none is split over them."""
    total = 0
    for x in jax.tree.leaves(params):
        target = gathered_sharding(x, mesh)
        if target.spec != x.sharding.spec:
            total += math.prod(target.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
    return total


def kv_cache_bytes(mc: ModelConfig, rows: int, positions: int) -> int:
    """The generation loop's key and value cache of `positions` slots, all rows, in the
    compute dtype."""
    return 2 * mc.n_layer * rows * positions * mc.n_embd * jnp.dtype(mc.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    gather: bool  # True: the weights gathered once before the loop; False: the training layout
    gathered_bytes: int  # per device, what the gathered copy adds (0: nothing to gather)
    state_bytes: int  # per device, the train state that stays on the devices
    cache_bytes: int  # the KV cache (all rows, counted whole)
    capacity: int | None  # bytes a program may use per device; None: no limit reported (CPU)

    @property
    def layout(self) -> str:
        return "gathered" if self.gather else "sharded"

    def describe(self) -> str:
        gib = 2**30
        if self.gather:
            return "eval-prompt decode: weights gathered once over fsdp/data (no collectives per token)"
        return (f"eval-prompt decode: weights stay FSDP-sharded, gathered per layer per token "
                f"(slower): a gathered copy needs {self.gathered_bytes / gib:.2f} GiB per device "
                f"beside the train state's {self.state_bytes / gib:.2f} GiB and the KV cache's "
                f"{self.cache_bytes / gib:.2f} GiB, more than {1 - HEADROOM:.0%} of the device's "
                f"{self.capacity / gib:.2f} GiB")


def gather_fits(gathered: int, state: int, cache: int, capacity: int | None) -> bool:
    """Whether a gathered copy of `gathered` bytes fits beside the train state (`state`) and
    the KV cache (`cache`), leaving `HEADROOM` of `capacity` free. No limit (CPU, where host
    memory holds every simulated device): gather, as the run always did there."""
    if capacity is None or gathered == 0:
        return True
    return state + gathered + cache + HEADROOM * capacity <= capacity


def plan(r, mesh, rows: int, capacity: int | None) -> DecodePlan:
    """The decode layout of the config `r` on `mesh` for a generation of `rows` prompts, on
    devices of `capacity` bytes each (`device_memory.device_capacity`, or a named chip's).

    The KV cache is counted over the whole block, a bound on the loop's prompt + new-token
    slots that needs no tokenizing: the run and the preflight decide from the same numbers.
    """
    tx, _ = optim.optimizer_from_config(r.config)
    state = ts.abstract_state(tx, r.model_config, mesh)
    gathered = gathered_bytes(state.params, mesh)
    state_bytes = bytes_per_device(state)
    cache = kv_cache_bytes(r.model_config, rows, r.model_config.block_size)
    return DecodePlan(gather_fits(gathered, state_bytes, cache, capacity), gathered,
                      state_bytes, cache, capacity)


def agreed(plan: DecodePlan) -> DecodePlan:
    """Process 0's choice on every process: another layout is another program, and processes
    that run different programs wait for each other forever."""
    if jax.process_count() == 1:
        return plan
    from jax.experimental import multihost_utils

    gather = bool(multihost_utils.broadcast_one_to_all(np.int32(plan.gather)))
    return dataclasses.replace(plan, gather=gather)


def decode_layout(params, mesh, gather: bool = True):
    """`params` gathered over the batch axes (fsdp, data) for the eval-prompt decode, or as
    they are where `gather` is False (`plan`) or the mesh has no batch axes to gather over."""
    if not gather or mesh.shape["fsdp"] * mesh.shape["data"] == 1:
        return params
    return jax.tree.map(lambda x: jax.device_put(x, gathered_sharding(x, mesh)), params)
