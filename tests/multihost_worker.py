"""One process of the multi-host test: join (or not), train 2 steps, train on to 4 from the checkpoint.

    python tests/multihost_worker.py --dataset D --workdir W [--port P --process_id I --num_processes N]
        [--steps S --compile_plan auto --cache_home C]

The parent sets XLA_FLAGS (devices per process) and JAX_PLATFORMS=cpu. Every process gets the
same workdir: orbax has each write its own shards of the checkpoint and restore its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

# Steps 0-2, a checkpoint at 2, then a second train() call that restores it and goes on to 4.
FIRST_STEPS, TOTAL_STEPS = 2, 4
OVERRIDES = {
    "eval_interval": 2, "log_interval": 1, "eval_iters": 1, "dropout": 0.1, "n_embd": 32,
    "block_size": 32, "batch_size": 8, "tensorboard": False, "eval_prompts_file": "",
    "warmup_iters": 1, "mesh_data": 4, "mesh_fsdp": 2, "mesh_tensor": 1,
    # The tiny episodes give 28-30 (input, target) pairs: batches land in different buckets,
    # and each process must pick the global batch's bucket from its own data.
    "length_buckets": (28, 29),
    "compile_plan": "exact",  # keep both buckets (the plan would pad the rare one up)
    # A time save at every log flush that process 0's clock allows (--stop_clock).
    "checkpoint_minutes": 0.0001,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--eval_prompts_file", default="", help="also generate at every eval")
    p.add_argument("--stop_clock", action="store_true",
                   help="this process's clock never moves: only process 0's may decide")
    p.add_argument("--steps", type=int, default=0,
                   help="one train() call of this many steps instead of the two above")
    p.add_argument("--compile_plan", default=OVERRIDES["compile_plan"])
    p.add_argument("--cache_home", default="",
                   help="this host's XDG_CACHE_HOME: the same config (compilation_cache_dir="
                        "auto), its own compile cache and timings, as on a pod's workers")
    args = p.parse_args()

    from mypt_jax.parallel import distributed

    if args.num_processes > 1:
        distributed.maybe_initialize(
            coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
            process_id=args.process_id, timeout_s=120)
    import jax
    import train_helpers

    from mypt_jax.training import hooks, trainer

    if args.stop_clock:
        hooks.clock = lambda: 0.0

    overrides = {**OVERRIDES, "eval_prompts_file": args.eval_prompts_file,
                 "compile_plan": args.compile_plan}
    if args.cache_home:
        os.environ["XDG_CACHE_HOME"] = args.cache_home
    if args.num_processes == 1:
        overrides["checkpoint_minutes"] = 0.0  # the time saves are the processes' agreement
    summaries = []
    for steps in [args.steps] if args.steps else (FIRST_STEPS, TOTAL_STEPS):
        config = train_helpers.tiny_config(args.dataset, args.workdir, max_iters=steps,
                                           **overrides)
        summaries.append(trainer.train(config))
    report = {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "resumed_from": summaries[-1].get("resumed_from"),
        "final_val_loss": summaries[-1]["final_val_loss"],
        "model_dir": summaries[-1].get("model_dir"),
        "batch_shapes": [s.get("batch_shapes") for s in summaries],
        "saves": [s.get("saves") for s in summaries],
        "shape_plan": summaries[-1].get("shape_plan"),
    }
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
