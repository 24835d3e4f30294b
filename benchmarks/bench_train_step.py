"""Times the jitted train step of a preset on synthetic batches; prints JSON.

    python benchmarks/bench_train_step.py --config configs/cpu_tiny.py [--steps 20]
        [--config.n_layer=4 ...]

No dataset is read: rows are random tokens with a `--mask_ratio` share of trained targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mypt_jax.data import inspect as data_inspect
from mypt_jax.data import loader as data  # noqa: E402
from mypt_jax.parallel import sharding
from mypt_jax.training.setup import config as cfg_lib  # noqa: E402
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mask_ratio", type=float, default=0.15)
    args, overrides = parser.parse_known_args(argv)
    c = data_inspect.load_config(args.config, overrides)
    mc = cfg_lib.model_config(c)
    mesh = sharding.make_mesh((c.mesh_data, c.mesh_fsdp, c.mesh_tensor))
    tx, schedule = optim.optimizer_from_config(c)

    t0 = time.perf_counter()
    mdef, params = ts.init_model(mc, mesh, c.seed)
    state = ts.init_state(params, tx, mc, mesh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    step = ts.make_train_step(mdef, tx, schedule, mesh, seed=c.seed,
                              grad_accum_steps=c.grad_accum_steps,
                              loss_chunk_size=c.loss_chunk_size, loss_positions=c.loss_positions)
    rng = np.random.default_rng(0)
    B, T = c.batch_size, c.block_size
    mask = np.zeros((B, T), np.float32)
    trained = max(1, int(args.mask_ratio * T))
    if c.loss_positions:
        trained = min(trained, c.loss_positions)
    mask[:, T - trained:] = 1.0  # the answer sits at the end of a row, as in SFT episodes
    local = {"inputs": rng.integers(0, 50257, (B, T), dtype=np.int32),
             "targets": rng.integers(0, 50257, (B, T), dtype=np.int32), "loss_mask": mask}
    batch = data.global_batch(local, mesh)

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({
        "config": args.config, "overrides": overrides, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind, "mesh": dict(zip(
            sharding.MESH_AXES, mesh.devices.shape, strict=True)),
        "batch_size": B, "block_size": T, "precision": c.precision,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "init_s": round(init_s, 3), "compile_and_first_step_s": round(compile_s, 3),
        "step_s_median": round(median, 5), "step_s_min": round(min(times), 5),
        "tokens_per_s": round(B * T / median, 1),
        "final_loss": float(metrics["train_loss"]),
    }, indent=2))


if __name__ == "__main__":
    main()
