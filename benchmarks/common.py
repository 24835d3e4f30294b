"""Shared helpers of the benchmark scripts: timing, the device's peak, machine facts.

FLOP counts and the published peaks come from `mypt_jax.preflight.chips` (the formulas are stated
there once; re-exported here for the benchmark scripts).

MFU = model FLOPs per second / the device's peak. On CPU the peak is measured in the same run:
the best rate of a large float32 matmul chain in JAX (`calibrated_matmul_runner`, over
`mypt_jax.preflight.peak.matmul_runner`). On GPU/TPU it is the published
dense bf16 peak of the device kind (`published_bf16_peak`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from mypt_jax.parallel import hostmem
from mypt_jax.preflight.chips import (  # noqa: F401 - re-exported for the benchmark scripts
    body_matmul_params,
    decode_flops_per_token,
    model_shape,
    published_bf16_peak,
    train_step_flops,
)
from mypt_jax.preflight.peak import matmul_runner  # noqa: F401 - re-exported for the benchmark scripts
from mypt_jax.preflight.report import rounded  # noqa: F401 - re-exported for the benchmark scripts

# Every benchmark runs with the host allocator settings of our entry points (torch, in the
# same process, gets them too).
MALLOC_TUNED = hostmem.keep_freed_memory()

# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(runners: Mapping[str, Callable[[], Any]], repeats: int,
                warmup: int = 1) -> dict[str, dict[str, float]]:
    """Runs each runner `warmup` times (first call timed as `first_s`), then `repeats` rounds
    in which every runner runs once, in turn, so that load from other processes on a shared
    machine hits all of them alike. Returns best, median and first seconds per runner.

    A runner must block until its work is done (`jax.block_until_ready`).
    """
    out: dict[str, dict[str, float]] = {}
    for name, fn in runners.items():
        first = timed(fn)
        for _ in range(warmup - 1):
            fn()
        out[name] = {"first_s": first}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            times[name].append(timed(fn))
    for name, ts in times.items():
        out[name].update(best_s=min(ts), median_s=statistics.median(ts))
    return out


# ----------------------------------------------------------------------------------------
# The device's peak
# ----------------------------------------------------------------------------------------

def calibrated_matmul_runner(target_s: float, n: int = 2048,
                             dtype: str = "float32") -> tuple[Callable[[], Any], float]:
    """A `matmul_runner` whose call lasts about `target_s` (at least one matmul)."""
    run, flops = matmul_runner(n, 1, dtype)
    one = min(timed(run) for _ in range(3))
    reps = max(1, round(target_s / one))
    return matmul_runner(n, reps, dtype) if reps > 1 else (run, flops)


# ----------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """This process's peak resident set (host memory, includes everything ever allocated)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_memory(device: Any = None) -> dict[str, int] | None:
    """peak / in-use bytes of an accelerator (None on CPU, whose client keeps no stats)."""
    import jax

    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats:
        return None
    return {"peak_bytes_in_use": int(stats.get("peak_bytes_in_use", 0)),
            "bytes_in_use": int(stats.get("bytes_in_use", 0)),
            "bytes_limit": int(stats.get("bytes_limit", 0))}


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's own buffer accounting of a compiled executable (`device_memory.from_compiled`)."""
    from mypt_jax.parallel import device_memory

    report = device_memory.from_compiled(compiled)
    return report.to_dict() if report else None


# ----------------------------------------------------------------------------------------
# Machine facts and output
# ----------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import jax

    info: dict[str, Any] = {
        "platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
        "backend": jax.default_backend(), "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("OPENBLAS", "OMP_", "MKL_", "XLA_FLAGS", "TF_CPP", "LD_PRELOAD"))},
        "malloc": hostmem.allocator(),
        "malloc_tuned": MALLOC_TUNED,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


