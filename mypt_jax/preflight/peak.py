"""The devices' matmul peak, the denominator of a run's MFU.

On CPU it is measured: the best rate of a chain of n x n x n matmuls in one jitted call (there
is no published number for "these cores, shared, at this moment"). On TPU/GPU it is the
published dense bf16 peak of the device kind (`preflight.chips`) times the device count.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from mypt_jax.preflight.chips import published_bf16_peak


def matmul_runner(n: int = 2048, reps: int = 1, dtype: str = "float32") -> tuple[Callable[[], Any], float]:
    """(runner, flops): `reps` chained n x n x n matmuls in one jitted call.

    On a shared machine a short matmul's best-of catches idle moments that a seconds-long
    train step never sees, which would bias MFU down; `reps` makes the runner about as long
    as the step it is compared with.
    """
    import jax

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype) / n**0.5  # keeps the chain's values bounded

    @jax.jit
    def chain(x, y):
        return jax.lax.fori_loop(0, reps, lambda _, acc: acc @ y, x)

    jax.block_until_ready(chain(a, b))
    return (lambda: jax.block_until_ready(chain(a, b))), 2.0 * n**3 * reps


def measured_matmul_peak(n: int = 1024, reps: int = 16, repeats: int = 3,
                         dtype: str = "float32") -> float:
    """Best FLOP/s of `repeats` calls of a `matmul_runner` (a lower bound on the true peak)."""
    run, flops = matmul_runner(n, reps, dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return flops / best


@functools.cache
def device_peak(dtype: str = "float32") -> tuple[float, str]:
    """(FLOP/s of all the run's devices, where the number comes from), once per process.

    CPU: measured here in `dtype` (about half a second). Accelerators: published bf16 peak
    per device x `jax.device_count()`; an unknown kind falls back to measuring one device.
    """
    import jax

    kind = jax.devices()[0].device_kind
    published = None if jax.default_backend() == "cpu" else published_bf16_peak(kind)
    if published:
        return published * jax.device_count(), f"published bf16 peak of {kind} x {jax.device_count()}"
    return measured_matmul_peak(dtype=dtype), f"measured {dtype} matmul on {kind}"
