"""The 750M train step compiled ahead of time for TPU topologies, einsum against splash attention.

    python benchmarks/aot_attention.py                       # the default matrix below
    python benchmarks/aot_attention.py --runs v6e:2x4/8,1,1/splash v5p:2x2x1/4,1,1/xla

No TPU is needed: libtpu (the `tpu` extra) compiles for a compile-only topology
(`jax.experimental.topologies`, as MaxText's train_compile.py does). Each run is
`topology/mesh data,fsdp,tensor/attention` and prints XLA's buffer accounting of the compiled
step per device (arguments, outputs, temporaries) and the lower and compile times.

Predicted step time is a floor, not a measurement: the model FLOPs of the step
(`common.train_step_flops`, the full T x T attention square) over the chips' published dense
bf16 peak, i.e. the time at 100% MFU:

    step_s >= flops_total / (chips * peak_per_chip)

The same for both attentions (the model FLOPs do not change with the kernel); what the kernel
changes is the memory (the einsum keeps a float32 T x T probability tensor per head, row and
layer for the backward pass) and the achievable MFU.

The shape is bench_train's `750m` (32 layers, 1280 wide, 20 heads, block 512, batch 16), seed
architecture, dropout 0 (the phase configs' 0.05 needs `attention_prob_dropout=False` with
splash; `--dropout` sets it). Runs go one at a time: each 750M compile takes several GB of
host memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server off-TPU
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu

import jax  # noqa: E402

from benchmarks import bench_train, common  # noqa: E402
from mypt_jax.model import attention  # noqa: E402
from mypt_jax.parallel import sharding  # noqa: E402

# v5p-8 = 4 chips (2x2x1), v6e-8 = 8 chips (2x4); data parallel, and v6e fully sharded too.
DEFAULT_RUNS = (
    "v5p:2x2x1/4,1,1/xla", "v5p:2x2x1/4,1,1/splash",
    "v6e:2x4/8,1,1/xla", "v6e:2x4/8,1,1/splash",
    "v6e:2x4/1,8,1/xla", "v6e:2x4/1,8,1/splash",
)


def compile_one(run: str, args) -> dict[str, Any]:
    from jax.experimental import topologies

    topology, mesh_sizes, kind = run.split("/")
    topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    mesh = sharding.make_mesh([int(s) for s in mesh_sizes.split(",")], devices=topo.devices)
    # splash has no attention-probability dropout: it drops that site (attention.py)
    mc = bench_train.model_config(args.shape, args.precision, args.remat).replace(
        attention=kind, dropout=args.dropout, attention_prob_dropout=kind == "xla")
    batch = args.batch_size or bench_train.SHAPES[args.shape]["batch_size"]
    step = bench_train.JaxStep(mc, batch, loss_chunk_size=args.loss_chunk_size, mesh=mesh)
    compiled = step.compile()
    chips = len(topo.devices)
    kind_name = topo.devices[0].device_kind
    peak = common.published_bf16_peak(kind_name)
    flops = common.train_step_flops(mc, batch, mc.block_size)["total"]
    out = {
        "run": run, "topology": topology, "device_kind": kind_name, "chips": chips,
        "mesh": dict(zip(sharding.MESH_AXES, mesh.devices.shape, strict=True)),
        "attention": kind, "resolved": attention.resolve(
            mc, attention.platform_of(mesh), prob_dropout=mc.dropout > 0 and mc.attention_prob_dropout)[0],
        # the Pallas kernel is a Mosaic custom call in the compiled program
        "pallas_kernel_in_hlo": "tpu_custom_call" in step.compiled.as_text(),
        "lower_s": compiled["lower_s"], "compile_s": compiled["compile_s"],
        "memory_per_device": compiled["memory"],
        "model_flops_per_step": flops,
        "peak_bf16_per_chip": peak,
        "predicted_step_s_at_100pct_mfu": flops / (chips * peak) if peak else None,
    }
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS),
                   help="topology/data,fsdp,tensor/attention ...")
    p.add_argument("--shape", choices=sorted(bench_train.SHAPES), default="750m")
    p.add_argument("--precision", default="mixed")
    p.add_argument("--remat", default="none")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch_size", type=int, default=0, help="0: the shape's batch")
    p.add_argument("--loss_chunk_size", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    report: dict[str, Any] = {"benchmark": "aot_attention", "command": " ".join(sys.argv),
                              "machine": common.machine_info(), "shape": args.shape,
                              "precision": args.precision, "remat": args.remat,
                              "dropout": args.dropout, "runs": []}
    t0 = time.perf_counter()
    for run in args.runs:
        try:
            report["runs"].append(compile_one(run, args))
        except Exception as e:  # noqa: BLE001 - report the failing run, go on with the rest
            report["runs"].append({"run": run, "error": f"{type(e).__name__}: {str(e)[:500]}"})
        jax.clear_caches()
    report["total_s"] = time.perf_counter() - t0
    report["peak_rss_bytes"] = common.peak_rss_bytes()
    print(json.dumps(common.rounded(report), indent=2))


if __name__ == "__main__":
    main()
