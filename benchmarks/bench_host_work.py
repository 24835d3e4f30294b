"""Host work between steps: the val loss before/after the per-episode rebuild, and prefetch
hiding a slow loader.

    python benchmarks/bench_host_work.py eval --dataset data/sft_ready/phase3a1_gamma \
        [--phase 3a1_gamma] [--repeats 3] [--eval_iters 200]
    python benchmarks/bench_host_work.py prefetch --dataset DIR [--delay_ms 40] [--steps 30]

`eval`: the CPU preset's model for `--phase` (configs/pipeline_cpu.py, random weights: the
cost does not depend on them) and its `eval_iters`; one eval computed batch by batch (the
upstream's way, `val_lib.batchwise_val_loss`) and by `val_lib.ValLoss`, interleaved,
`--repeats` times after a first compiling pass. Prints seconds per eval of each, the ratio
and the largest difference of the two numbers.

`prefetch`: 8 simulated CPU devices; the loader sleeps `--delay_ms` per batch (a slow
filesystem); the CPU preset's alpha model trains `--steps` steps with `prefetch_batches=0`
and `=2`. Prints the loop's input wait as a share of the step time, from the run's log.
Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_eval(args) -> dict:
    import jax
    import numpy as np

    from configs import pipeline_cpu
    from mypt_jax.data import batching
    from mypt_jax.data import loader as data
    from mypt_jax.parallel import sharding
    from mypt_jax.training.evals import val_loss as val_lib
    from mypt_jax.training.setup import config as cfg_lib
    from mypt_jax.training.step import train_step as ts

    c = pipeline_cpu.get_config(args.phase)
    c.dataset_dir, c.workdir, c.eval_prompts_file = args.dataset, tempfile.mkdtemp(), ""
    c.eval_iters = args.eval_iters or c.eval_iters
    r = cfg_lib.resolve(c)
    mesh = sharding.make_mesh(r.mesh_shape)
    mdef, params = ts.init_model(r.model_config, mesh, seed=0)
    source = data.make_source(c.dataset_dir, "val", batch_size=c.batch_size,
                              block_size=c.block_size, epoch_seed=c.epoch_seed,
                              tokenizer=r.tokenizer, row_stats=True)
    layout = batching.layout_from_config(c, data_shards=mesh.shape["data"] * mesh.shape["fsdp"])
    eval_fn = ts.make_eval_step(mdef, mesh, loss_chunk_size=c.loss_chunk_size)
    rebuilt = val_lib.ValLoss(source, val_lib.make_row_loss_step(mdef, mesh), mesh, layout,
                                 c.eval_iters)

    def batchwise(position):
        return val_lib.batchwise_val_loss(eval_fn, params, source, position, c.eval_iters,
                                             mesh, layout)

    times: dict[str, list[float]] = {"batchwise": [], "rebuilt": []}
    diffs = []
    for rep in range(args.repeats + 1):  # pass 0 compiles every shape
        position = rep * c.eval_iters
        for name, fn in (("batchwise", batchwise), ("rebuilt", lambda p: rebuilt(params, p))):
            t0 = time.perf_counter()
            value = fn(position)
            if rep:
                times[name].append(time.perf_counter() - t0)
            if name == "batchwise":
                want = value
        diffs.append(float(np.max(np.abs(np.subtract(value, want)))))
    best = {k: min(v) for k, v in times.items()}
    return {"phase": args.phase, "eval_iters": c.eval_iters, "batch_size": c.batch_size,
            "val_episodes": len(source.split), "resident": rebuilt._resident is not None,
            "eval_s": best, "speedup": best["batchwise"] / best["rebuilt"],
            "max_abs_diff": max(diffs), "devices": jax.device_count()}


def bench_prefetch(args) -> dict:
    from configs import pipeline_cpu
    from mypt_jax.data import loader as data
    from mypt_jax.training import trainer

    original = data.EpisodeBatchSource.__getitem__

    def slow(self, batch):
        time.sleep(args.delay_ms / 1000)
        return original(self, batch)

    data.EpisodeBatchSource.__getitem__ = slow
    out = {}
    for depth in (0, 2):
        c = pipeline_cpu.get_config("3a1_alpha")
        workdir = tempfile.mkdtemp()
        c.dataset_dir, c.workdir, c.eval_prompts_file = args.dataset, workdir, ""
        c.max_iters, c.eval_interval, c.log_interval = args.steps, 10_000, 5
        c.checkpoint_interval, c.eval_iters = 10_000, 1
        c.prefetch_batches, c.mesh_data = depth, 8
        trainer.train(c)
        log = [json.loads(x) for x in (Path(workdir) / "log.jsonl").read_text().splitlines()]
        steps = [x for x in log if "train_loss" in x][1:]  # the first window holds the compile
        wait = sum(x["input_wait_s"] for x in steps)
        step_time = sum(x["step_time"] * len(x["buckets"]) for x in steps)
        out[f"prefetch_{depth}"] = {"input_wait_s": wait, "step_time_s": step_time,
                                    "input_wait_share": wait / step_time}
    out["delay_ms"] = args.delay_ms
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--dataset", required=True)
    e.add_argument("--phase", default="3a1_gamma")
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--eval_iters", type=int, default=0,
                   help="default: the preset's; 200 is the upstream's (and the real presets')")
    f = sub.add_parser("prefetch")
    f.add_argument("--dataset", required=True)
    f.add_argument("--delay_ms", type=float, default=40.0)
    f.add_argument("--steps", type=int, default=30)
    return p


def main() -> None:
    args = build_parser().parse_args()
    if args.what == "prefetch":  # before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=8")
    result = bench_eval(args) if args.what == "eval" else bench_prefetch(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
