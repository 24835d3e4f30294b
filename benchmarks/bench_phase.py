"""A real Phase 3a train step on a prepared dataset: the padded layout against the padding-free ones.

    python benchmarks/bench_phase.py --dataset data/sft_ready/phase3a1_gamma [--steps 8] [--repeats 3]
    python benchmarks/bench_phase.py --dataset ... --shape 750m --precision mixed --aot_only
    python benchmarks/bench_phase.py --dataset ... --layouts trimmed+head --no_torch   # MFU only

The same `--steps` global batches of the real episode stream (the preset's loader settings:
block 512, batch 16, its epoch seed) are shaped four ways (mypt_jax/data/batching.py) and trained
by the trainer's own step (`training.step.make_train_step`), each layout from the same initial
weights:
- padded: the upstream layout (rows of block_size, every position projected);
- trimmed: rows cut to the batch's length bucket, every position projected;
- trimmed+head: and only the trained positions projected (the default);
- trimmed+flat: the trained positions of all rows share the rows' K x rows slots (`flat_head`);
- packed+head: the step's episodes packed into as few rows as fit (`pack_episodes`);
- torch_padded (with torch installed): the test suite's PyTorch model, eager, padded rows.

A first pass over the batches compiles every bucket (timed apart); then `--repeats` rounds
each time one pass of every layout in turn, interleaved, so that machine load hits all
alike. A layout's step time is its best pass over the number of steps. The first pass's
per-step losses of every layout are compared with the padded ones (`max_loss_diff`).
Reported per layout: step time, real tokens/s (episode tokens), trained tokens/s, the
padded-position rate, the speed-up over padded, the projected time of the whole phase
(`max_iters` steps at that step time), and MFU. Never asserts on time.

MFU is the model FLOPs of the shapes actually run (`shape_plan.step_flops`: the body over
every row x length position, the vocabulary head over the K projected positions per row)
per second, over the float32 matmul peak measured in the same interleaved rounds (a chain
of 2048^3 matmuls lasting about one pass, `common.calibrated_matmul_runner`).
`useful_mfu` counts only the work the loss needs: the block matmuls over real episode tokens
and the head over trained positions (attention left out).

`--aot_only` compiles (ahead of time, abstract inputs) the step for the largest shape of each
length bucket of each layout, and counts the distinct batch shapes the phase's whole stream
(`max_iters` batches) produces: the compiles a run pays.
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
# The trainer's allocator settings (mypt_jax/parallel/hostmem.py: freed memory kept), so that a
# layout's step time is the one training sees (gamma trimmed+head 0.40 s tuned, 0.52 s not), except
# beside the padded layout: its buffers and the others' differently sized ones fragment a heap
# that is never trimmed (an 8-step gamma run grew past 20 GB). machine.malloc_tuned says which.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--layouts", default="padded")
if "padded" in _pre.parse_known_args()[0].layouts.split(","):
    os.environ.setdefault("MYPT_MALLOC_TUNING", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_train, common  # noqa: E402
from mypt_jax.data import batching  # noqa: E402
from mypt_jax.data import loader as data  # noqa: E402
from mypt_jax.data.inspect import load_config  # noqa: E402
from mypt_jax.model import flops as flops_lib  # noqa: E402
from mypt_jax.parallel import sharding  # noqa: E402
from mypt_jax.training.compilation.shape_plan import step_flops  # noqa: E402
from mypt_jax.training.setup import config as cfg_lib  # noqa: E402
from mypt_jax.training.step import optim  # noqa: E402
from mypt_jax.training.step import train_step as ts  # noqa: E402

LAYOUTS = {  # name -> (length buckets: default?, loss_positions, pack, flat head)
    "padded": (False, batching.ALL_POSITIONS, False, False),
    "trimmed": (True, batching.ALL_POSITIONS, False, False),
    "trimmed+head": (True, 0, False, False),
    "trimmed+flat": (True, 0, False, True),
    "packed+head": (True, 0, True, False),
}


def layouts(block_size: int, names=tuple(LAYOUTS)) -> dict[str, batching.Layout]:
    out = {}
    for name in names:
        trim, positions, pack, flat = LAYOUTS[name]
        buckets = batching.default_length_buckets(block_size) if trim else (block_size,)
        out[name] = batching.Layout(block_size, buckets, positions, pack, flat_groups=int(flat))
    return out


def loader_batches(c, dataset: str, steps: int, start: int = 0) -> list[dict[str, np.ndarray]]:
    it = data.make_iterator(dataset, "train", batch_size=c.batch_size, block_size=c.block_size,
                            epoch_seed=c.epoch_seed, mode=c.batch_sampling_mode,
                            episode_min_tokens=c.episode_min_tokens, shuffle=c.epoch_shuffle,
                            process_index=0, process_count=1, row_stats=True, start_batch=start)
    out = [next(it) for _ in range(steps)]
    it.close()
    return out


def phase_shapes(c, dataset: str, layout: batching.Layout) -> dict[str, int]:
    """Distinct batch shapes over the phase's whole stream (`max_iters` batches): its compiles."""
    counts: dict[str, int] = {}
    for b in loader_batches(c, dataset, c.max_iters):
        shape = str(batching.shape_batch(b, layout)[1].shape)
        counts[shape] = counts.get(shape, 0) + 1
    return counts


class LayoutRun:
    """One layout: its shaped batches on device, a train state, and a jitted step."""

    def __init__(self, mc, mesh, batches_np, layout, pad_id: int, params):
        tx, schedule = optim.make_optimizer(**bench_train.OPT)
        self.step_fn = ts.make_train_step(ts.model_def(mc), tx, schedule, mesh, seed=0)
        shaped = [batching.shape_batch(b, layout, pad_id=pad_id) for b in batches_np]
        self.infos = [info for _, info in shaped]
        self.shapes = [info.shape for info in self.infos]
        self.batches = [data.global_batch(b, mesh) for b, _ in shaped]
        self.state = ts.init_state(jax.tree.map(lambda x: x.copy(), params), tx, mc, mesh)
        self.losses: list[float] = []

    def one_pass(self, record: bool = False) -> None:
        for batch in self.batches:
            self.state, metrics = self.step_fn(self.state, batch)
            if record:
                self.losses.append(float(metrics["train_loss"]))
        jax.block_until_ready(self.state)


class TorchRun:
    """The test suite's PyTorch model on the padded rows (same initial weights, eager)."""

    def __init__(self, mc, batches_np, params):
        padded = [{k: v for k, v in b.items() if k not in batching.STAT_KEYS} for b in batches_np]
        self.step = bench_train.TorchStep(mc, jax.tree.map(np.asarray, params), padded[0])
        self.batches, self.losses = padded, []
        rows, length = padded[0]["inputs"].shape
        self.shapes = [batching.BatchShape(rows, length, 0, False)] * len(padded)

    def one_pass(self, record: bool = False) -> None:
        for b in self.batches:
            self.step.set_batch(b)
            loss = self.step.run()
            if record:
                self.losses.append(loss)


def phase_model(args, c):
    """`--shape preset`: the config's own model; else a benchmark shape at its block size."""
    if args.shape == "preset":
        return cfg_lib.model_config(c)
    return bench_train.model_config(args.shape, args.precision, args.remat, block_size=c.block_size)


def useful_flops(mc, info: batching.BatchInfo) -> float:
    """The step's FLOPs the loss needs: the block matmuls over real tokens, the head over
    trained ones (attention, which depends on how rows are cut, is left out)."""
    s = flops_lib.model_shape(mc)
    return 6 * s["N_body"] * info.real_tokens + 6 * s["V"] * s["C"] * info.trained_tokens


def run_full(args, c, mc) -> dict[str, Any]:
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    batches_np = loader_batches(c, args.dataset, args.steps, args.start_batch)
    pad_id = data.dataset_tokenizer(args.dataset).eot_id
    _, params = ts.init_model(mc, mesh, seed=0)
    runs: dict[str, Any] = {name: LayoutRun(mc, mesh, batches_np, layout, pad_id, params)
                            for name, layout in layouts(c.block_size, args.layouts).items()}
    if args.torch and common.have_torch():
        runs["torch_padded"] = TorchRun(mc, batches_np, params)
    first_pass = {}
    for name, run in runs.items():  # compiles every bucket; losses of the same weights
        first_pass[name] = common.timed(lambda r=run: r.one_pass(record=True))
    # The peak runner lasts about as long as the last layout's pass, so load hits both alike.
    matmul, matmul_flops = common.calibrated_matmul_runner(first_pass[name])
    passes: dict[str, list[float]] = {name: [] for name in [*runs, "matmul_peak"]}
    for _ in range(args.repeats):
        for name, run in [*runs.items(), ("matmul_peak", None)]:
            passes[name].append(common.timed(run.one_pass if run else matmul))
    peak = matmul_flops / min(passes.pop("matmul_peak"))

    reference = runs.get("padded") or next(iter(runs.values()))  # the loss each layout matches
    infos = reference.infos  # the batches' statistics: every layout shapes the same ones
    padded_s = min(passes["padded"]) / args.steps if "padded" in passes else None
    useful = sum(useful_flops(mc, i) for i in infos) / args.steps
    out: dict[str, Any] = {"matmul_peak_flops_per_s": peak, "layouts": {}}
    for name, run in runs.items():
        step_s = min(passes[name]) / args.steps
        model_flops = sum(step_flops(mc, s) for s in run.shapes) / args.steps
        entry = {
            "step_s": step_s,
            "first_pass_s": first_pass[name],
            "model_flops_per_step": model_flops,
            "mfu": model_flops / step_s / peak,
            "useful_mfu": useful / step_s / peak,
            "speedup_over_padded": padded_s / step_s if padded_s else None,
            "real_tokens_per_s": sum(i.real_tokens for i in infos) / args.steps / step_s,
            "trained_tokens_per_s": sum(i.trained_tokens for i in infos) / args.steps / step_s,
            "padded_positions_per_s": sum(i.padded_positions for i in infos) / args.steps / step_s,
            "computed_positions_per_step": sum(s.rows * s.length for s in run.shapes) / args.steps,
            "projected_phase_s": step_s * c.max_iters,
            "max_loss_diff": float(np.max(np.abs(np.subtract(run.losses, reference.losses)))),
        }
        if hasattr(run, "step_fn"):
            entry["compiles"] = run.step_fn._cache_size()
            entry["buckets"] = sorted({str(i.shape) for i in run.infos})
        out["layouts"][name] = entry
    out["first_losses"] = {name: run.losses[:3] for name, run in runs.items()}
    out["stream"] = {
        "real_tokens_per_step": sum(i.real_tokens for i in infos) / args.steps,
        "trained_tokens_per_step": sum(i.trained_tokens for i in infos) / args.steps,
        "padded_positions_per_step": infos[0].padded_positions,
    }
    out["peak_rss_bytes"] = common.peak_rss_bytes()
    return out


def run_aot(args, c, mc) -> dict[str, Any]:
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(**bench_train.OPT)
    step_fn = ts.make_train_step(ts.model_def(mc), tx, schedule, mesh, seed=0)
    state = ts.abstract_state(tx, mc, mesh)
    bsh = ts.batch_sharding(mesh)
    out: dict[str, Any] = {"layouts": {}}
    for name, layout in layouts(c.block_size).items():
        lc = c.copy_and_resolve_references()
        lc.length_buckets = layout.length_buckets
        lc.loss_positions = layout.loss_positions
        lc.pack_episodes = layout.pack
        lc.flat_head = layout.flat_groups > 0
        entry: dict[str, Any] = {"phase_shapes": phase_shapes(c, args.dataset, layout),
                                 "compiled": {}}
        for shape in batching.step_shapes(lc):
            batch = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=bsh)
                     for k, x in batching.abstract_batch(shape).items()}
            t0 = time.perf_counter()
            compiled = step_fn.lower(state, batch).compile()
            entry["compiled"][str(shape)] = {"compile_s": time.perf_counter() - t0,
                                             "memory": common.compiled_memory(compiled)}
        entry["distinct_shapes"] = len(entry["phase_shapes"])
        out["layouts"][name] = entry
    return out


def build_parser() -> argparse.ArgumentParser:
    """The flags; `--config.field=value` overrides are left for `load_config`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="data/sft_ready/phase3a1_gamma")
    p.add_argument("--config", default="configs/phase3a1_gamma.py",
                   help="the preset whose loader settings and max_iters are used")
    p.add_argument("--shape", choices=[*sorted(bench_train.SHAPES), "preset"], default="small",
                   help="model shape (block_size and batch come from the preset); preset: the "
                        "config's own model, precision and remat")
    p.add_argument("--precision", choices=("fp32", "mixed", "bf16_pure"), default="fp32")
    p.add_argument("--remat", choices=("none", "full", "dots"), default="none")
    p.add_argument("--steps", type=int, default=8, help="global batches of the stream timed")
    p.add_argument("--layouts", type=lambda v: tuple(v.split(",")), default=tuple(LAYOUTS),
                   help="comma list of " + ",".join(LAYOUTS))
    p.add_argument("--start_batch", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_torch", dest="torch", action="store_false")
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--aot_only", action="store_true")
    return p


def parse_args(argv=None):
    p = build_parser()
    args, overrides = p.parse_known_args(argv)
    unknown = sorted(set(args.layouts) - set(LAYOUTS))
    if unknown:
        p.error(f"--layouts: unknown {unknown}; expected some of {list(LAYOUTS)}")
    return args, overrides


def main(argv=None) -> None:
    args, overrides = parse_args(argv)
    if args.torch_threads and common.have_torch():
        import torch

        torch.set_num_threads(args.torch_threads)
    c = load_config(str(ROOT / args.config) if not os.path.isfile(args.config) else args.config,
                    overrides)
    mc = phase_model(args, c)
    report: dict[str, Any] = {
        "benchmark": "phase_step", "command": " ".join(sys.argv), "machine": common.machine_info(),
        "dataset": args.dataset, "preset": args.config,
        "loader": {"block_size": c.block_size, "batch_size": c.batch_size,
                   "epoch_seed": c.epoch_seed, "max_iters": c.max_iters},
        "model": {k: getattr(mc, k) for k in ("n_layer", "n_embd", "n_head", "block_size",
                                              "vocab_size", "dtype", "remat")},
    }
    report.update(run_aot(args, c, mc) if args.aot_only else run_full(args, c, mc))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(common.rounded(report), indent=2))


if __name__ == "__main__":
    main()
