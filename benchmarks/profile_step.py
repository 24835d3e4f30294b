"""Where the train step's time goes: XLA's per-op profile, and the head's matmuls against torch.

    .venv/bin/python benchmarks/profile_step.py [--shape small] [--top 30] [--loss_chunk_size K]

Traces two steps of the trainer's jitted step with the JAX profiler (a Perfetto trace, with
XLA:CPU's per-thunk trace events switched on), names every thunk by the optimized HLO it
runs (shape and the JAX op it came from, from an XLA dump in a temporary directory), and
prints one JSON object: the top ops by time per step and the time per kind of op. Trace
events that no HLO instruction is named after (the host's dispatch of the jitted call, ...)
are reported apart, under `not_in_hlo`, so that the top ops are always ops. On CPU
it also times the vocabulary head's three matmul shapes alone, in JAX and, with the torch
extra, in torch (the GEMM rates the train-step race depends on).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DUMP = tempfile.mkdtemp(prefix="mypt_profile_")
# Before JAX starts: per-thunk trace events, and the optimized HLO to name them by.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_xprof_traceme=true",
    f"--xla_dump_to={DUMP}"]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_train, common  # noqa: E402

_HLO_OP = re.compile(r'^\s*(?:ROOT )?%(\S+) = (\S+) (.*)$', re.M)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SKIP = ("ThunkExecutor", "Await", "$")  # waits and Python frames, not ops


def hlo_ops() -> dict[str, tuple[str, str]]:
    """Thunk name -> (result shape, JAX op name or "") from the dumped optimized HLO of the step.

    Every instruction is listed; XLA leaves op_name out of some (a dot it created itself)."""
    ops: dict[str, tuple[str, str]] = {}
    for f in sorted(Path(DUMP).glob("*jit_step*after_optimizations.txt")):
        for m in _HLO_OP.finditer(f.read_text()):
            op_name = _OP_NAME.search(m.group(3))
            ops[m.group(1)] = (m.group(2), op_name.group(1) if op_name else "")
    return ops


def kind(name: str, shape: str, op: str, vocab: int) -> str:
    if f"{vocab}" in shape or "nc,vc->nv" in op or "nv,vc->nc" in op or "n,nv->v" in op:
        return "vocabulary head"
    if "dot_general" in op or name.startswith("dot"):
        return "block matmuls"
    if "dynamic" in op or "dynamic" in name:
        return "layer scan plumbing (dynamic slices)"
    if name.startswith(("copy", "transpose")):
        return "copies and transposes"
    return "elementwise, norms, reductions, optimizer"


def best_s(fn, *args, repeats: int = 4) -> float:
    def call():
        return jax.block_until_ready(fn(*args))

    call()  # compile / warm up
    return min(common.timed(call) for _ in range(repeats))


def trace_step(jstep: bench_train.JaxStep, steps: int = 2) -> dict[str, float]:
    """Microseconds per step of every traced op."""
    trace_dir = tempfile.mkdtemp(prefix="mypt_trace_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            jstep.run()
    path = next(Path(trace_dir).rglob("*perfetto_trace.json.gz"))
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_SKIP):
            per_op[e["name"]] += e["dur"] / steps
    return per_op


def head_matmuls(n: int, c: int, v: int) -> dict[str, Any]:
    """GFLOP/s of the head's three matmuls alone: logits, d hidden, d kernel (transposed)."""
    rng = np.random.default_rng(0)
    h, w, g = (rng.standard_normal(s, np.float32) for s in ((n, c), (v, c), (n, v)))
    shapes = {"logits h @ W.T": (lambda a, b: a @ b.T, h, w),
              "d_hidden g @ W": (lambda a, b: a @ b, g, w),
              "d_kernel h.T @ g": (lambda a, b: a.T @ b, h, g)}
    flops = 2 * n * c * v
    out: dict[str, Any] = {}
    for name, (fn, a, b) in shapes.items():
        t = best_s(jax.jit(fn), jnp.asarray(a), jnp.asarray(b))
        out[name] = {"jax_gflops": flops / t / 1e9}
        if common.have_torch():
            import torch

            t = best_s(fn, torch.from_numpy(a), torch.from_numpy(b))
            out[name]["torch_gflops"] = flops / t / 1e9
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="small", choices=sorted(bench_train.SHAPES))
    p.add_argument("--precision", default="fp32", choices=["fp32", "mixed", "bf16_pure"])
    p.add_argument("--loss_chunk_size", type=int, default=0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--unroll_layers", action="store_true", help="scan_layers=False")
    p.add_argument("--batch_size", type=int, default=0, help="rows; 0: the shape's")
    p.add_argument("--seq", type=int, default=0, help="row length; 0: the shape's block_size")
    p.add_argument("--loss_positions", type=int, default=0,
                   help="K: project only each row's first K trained positions (the trainer's head)")
    args = p.parse_args(argv)

    mc = bench_train.model_config(args.shape, args.precision, scan_layers=not args.unroll_layers,
                                  block_size=args.seq or None)
    B, T = args.batch_size or bench_train.SHAPES[args.shape]["batch_size"], mc.block_size
    jstep = bench_train.JaxStep(mc, B, loss_chunk_size=args.loss_chunk_size,
                                loss_positions=args.loss_positions)
    jstep.compile()
    jstep.init(bench_train.synthetic_batch(B, T, 0.15))
    step_s = best_s(jstep.run, repeats=3)
    per_op = trace_step(jstep)
    ops = hlo_ops()
    kinds: collections.Counter = collections.Counter()
    top, not_in_hlo = [], {}
    for name, us in per_op.most_common():
        if name not in ops:  # host-side events; how long they take depends on the machine's load
            not_in_hlo[name] = round(us / 1e3, 2)
            continue
        shape, op = ops[name]
        kinds[kind(name, shape, op, mc.vocab_size)] += us / 1e3
        if len(top) < args.top:
            top.append({"op": name, "ms": round(us / 1e3, 2), "shape": shape, "from": op[-90:]})
    report: dict[str, Any] = {
        "benchmark": "profile_step", "command": " ".join(sys.argv),
        "machine": common.machine_info(), "step_s_best": step_s,
        # Ops run concurrently on the thunk executor, so the sum can exceed the step time.
        "traced_ms_per_step": round(sum(per_op.values()) / 1e3, 1),
        "ms_per_kind": {k: round(v, 1) for k, v in kinds.most_common()},
        "top_ops": top,
        "not_in_hlo": dict(list(not_in_hlo.items())[:args.top]),
    }
    if jax.default_backend() == "cpu":
        report["head_matmuls"] = common.rounded(head_matmuls(B * T, mc.n_embd, mc.vocab_size))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
