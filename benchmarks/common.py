"""Shared helpers of the benchmark scripts: timing, the device's peak, FLOP counts, machine facts.

FLOP count of one training step (forward + backward), defined here once:

    flops = 6 * N_body * B * T            # every block matmul, forward (2) + backward (4)
          + 6 * V * C * B * P             # the vocabulary projection, on the P projected
                                          #   positions per row (P = T unless the loss only
                                          #   projects trained positions)
          + 12 * L * T * C * B * T        # attention scores and weighted sum (PaLM / nanoGPT)

i.e. 6 * N * tokens + 12 * L * T * C per token with N = N_body + V * C. N_body = the matmul
weights of the blocks (qkv, attention proj, MLP kernels): what every token multiplies;
embeddings are lookups and norms/biases are negligible. The attention term counts the whole
T x T square as the PaLM / nanoGPT MFU figures do; half of it is masked (causal), reported as
`attention_causal` (on the small shape attention is 3% of the total, on the 750M shape 5%).
Decoding (forward only) is 2 * N_matmul per token plus 4 * L * C * S for S cached positions.

MFU = model FLOPs per second / the device's peak. On CPU the peak is measured in the same run:
the best rate of a large float32 matmul in JAX (`matmul_peak`). On GPU/TPU it is the published
dense bf16 peak of the device kind (`published_bf16_peak`).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from mypt_jax import hostmem

# Every benchmark runs with the host allocator settings of our entry points (torch, in the
# same process, gets them too).
MALLOC_TUNED = hostmem.keep_freed_memory()

# Dense (no sparsity) bf16 peak FLOP/s per device, from the vendors' data sheets.
# H100 SXM: 989.4 TFLOP/s (the 1979 figure is with 2:4 sparsity); H100 PCIe: 756;
# H200 SXM: 989 (same compute die as H100 SXM); A100 (SXM and PCIe): 312;
# TPU v4: 275 per chip; v5p: 459; v5e ("v5 lite"): 197; v6e (Trillium): 918.
PUBLISHED_BF16_PEAK = (
    ("h100 pcie", 756e12),
    ("h100", 989.4e12),
    ("h200", 989.4e12),
    ("gh200", 989.4e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6", 918e12),
)


def published_bf16_peak(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s of one device of this `jax.Device.device_kind`, None if unknown."""
    kind = device_kind.lower()
    for name, peak in PUBLISHED_BF16_PEAK:
        if name in kind:
            return peak
    return None


# ----------------------------------------------------------------------------------------
# FLOP counts
# ----------------------------------------------------------------------------------------

def body_matmul_params(n_layer: int, n_embd: int, mlp_hidden: int, gated: bool = False) -> int:
    """Weights of the block matmuls (qkv, attention proj, MLP), all layers."""
    mlp = (3 if gated else 2) * n_embd * mlp_hidden
    return n_layer * (4 * n_embd * n_embd + mlp)


def model_shape(cfg: Any) -> dict[str, int]:
    """The numbers the formulas need, from a `ModelConfig`."""
    return {"L": cfg.n_layer, "C": cfg.n_embd, "V": cfg.vocab_size,
            "N_body": body_matmul_params(cfg.n_layer, cfg.n_embd, cfg.mlp_hidden,
                                         cfg.mlp_type == "swiglu")}


def train_step_flops(cfg: Any, batch: int, seq: int, projected: int | None = None) -> dict[str, float]:
    """Model FLOPs of one train step on `batch` rows of `seq` tokens (see the module docstring).

    `projected`: positions per row that go through the vocabulary projection (default: all).
    """
    s = model_shape(cfg)
    P = seq if projected is None else projected
    tokens = batch * seq
    body = 6 * s["N_body"] * tokens
    head = 6 * s["V"] * s["C"] * batch * P
    attention = 12 * s["L"] * s["C"] * seq * tokens
    return {"total": body + head + attention, "body": body, "head": head,
            "attention": attention, "attention_causal": attention / 2}


def decode_flops_per_token(cfg: Any, cached: int) -> float:
    s = model_shape(cfg)
    return 2 * (s["N_body"] + s["V"] * s["C"]) + 4 * s["L"] * s["C"] * cached


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

def matmul_runner(n: int = 2048, reps: int = 1, dtype: str = "float32") -> tuple[Callable[[], Any], float]:
    """(runner, flops): `reps` chained n x n x n matmuls in one jitted call, for the peak.

    On a shared machine a short matmul's best-of catches idle moments that a seconds-long
    train step never sees, which would bias MFU down; `reps` makes the runner about as long
    as the step it is compared with (see `calibrated_matmul_runner`).
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


def calibrated_matmul_runner(target_s: float, n: int = 2048,
                             dtype: str = "float32") -> tuple[Callable[[], Any], float]:
    """A `matmul_runner` whose call lasts about `target_s` (at least one matmul)."""
    run, flops = matmul_runner(n, 1, dtype)
    one = min(timed(run) for _ in range(3))
    reps = max(1, round(target_s / one))
    return matmul_runner(n, reps, dtype) if reps > 1 else (run, flops)


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Best FLOP/s of an n^3 matmul over `repeats` tries (a lower bound on the true peak)."""
    run, flops = matmul_runner(n, 1, dtype)
    return flops / min(timed(run) for _ in range(repeats))


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
    """XLA's own buffer accounting of a compiled executable (arguments, outputs, temporaries)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {f.removesuffix("_in_bytes"): int(getattr(m, f, 0)) for f in fields}


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


def rounded(tree: Any, digits: int = 4) -> Any:
    if isinstance(tree, dict):
        return {k: rounded(v, digits) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [rounded(v, digits) for v in tree]
    if isinstance(tree, float) and math.isfinite(tree):
        return float(f"{tree:.{digits}g}")
    return tree
