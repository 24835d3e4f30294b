"""Predicted wall-clock of a training phase from compiled programs' rooflines.

Padded: every step at the largest batch shape. Padding-free: the dataset's mix of batch
shapes (`bucket_mix`), each shape's compute from the FLOP formula and its memory from its
length bucket's compiled step. `mypt_jax.preflight` and `benchmarks/phase_times.py` use it.
"""

from __future__ import annotations

import os
from typing import Any

from mypt_jax.data import batching
from mypt_jax.preflight import chips
from mypt_jax.training import config as cfg_lib


def bucket_mix(r: cfg_lib.Resolved, layout: batching.Layout,
               batches: int) -> dict[batching.BatchShape, float] | None:
    """Share of train steps per batch shape, from the first `batches` batches of the dataset."""
    from mypt_jax.data import inspect as data_inspect
    from mypt_jax.data import loader as data

    if batches <= 0 or not os.path.isdir(r.config.dataset_dir or ""):
        return None
    it = data.make_iterator(r.config.dataset_dir, "train", tokenizer=r.tokenizer,
                            row_stats=True, process_index=0, process_count=1,
                            **data_inspect.iterator_kwargs(r.config))
    counts: dict[batching.BatchShape, int] = {}
    try:
        for _ in range(batches):
            _, info = batching.shape_batch(next(it), layout, pad_id=r.tokenizer.eot_id)
            counts[info.shape] = counts.get(info.shape, 0) + 1
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    return {k: v / batches for k, v in counts.items()}


def phase_time(r: cfg_lib.Resolved, chip: chips.Chip | None, devices: int, results: list[dict],
               mix: dict[batching.BatchShape, float] | None) -> dict[str, Any] | None:
    """Predicted seconds of the config's max_iters steps (and its evals), from the roofline.

    Padded: every step at the largest shape. Padding-free: the dataset's shape mix, each
    shape's compute from the FLOP formula and its memory term from its length bucket's
    compiled step (which projects every position: an upper bound; the largest shape's when
    only that one was compiled).
    """
    if chip is None:
        return None
    c, mc = r.config, r.model_config
    train = [p for p in results if p["kind"] == "train" and "roofline" in p]
    if not train:
        return None
    by_length = {p["shape"]["length"]: p for p in train}
    largest = train[0]
    evals = c.max_iters // c.eval_interval + 1
    bound_only = largest["roofline"]["step_s"] is None  # no bytes: compute bound only

    def step_s(roof: dict) -> float:
        return roof["step_s_bound"] if bound_only else roof["step_s"]

    per_eval = sum(step_s(p["roofline"]) * (c.eval_iters if p["kind"] == "eval" else 1)
                   for p in results if p["kind"] in ("eval", "decode") and "roofline" in p)
    out: dict[str, Any] = {
        "max_iters": c.max_iters, "evals": evals, "eval_s": per_eval,
        "padded_train_s": c.max_iters * step_s(largest["roofline"]), "compute_bound_only": bound_only,
    }
    if mix:
        mean = 0.0
        for shape, share in mix.items():
            flops = chips.train_step_flops(mc, shape.rows, shape.length, shape.positions or None)
            base = by_length.get(shape.length, largest)
            t = chips.roofline(chip, model_flops=flops["total"],
                               executed_flops=chips.remat_flops(flops, mc.remat),
                               hbm_bytes=base["hbm_bytes"],
                               overlapped_bytes=(base.get("hbm") or {}).get("overlapped", 0.0),
                               devices=devices)
            mean += share * step_s(t)
        out["shape_mix"] = {str(k): v for k, v in sorted(mix.items(), key=lambda kv: -kv[1])}
        out["padding_free_train_s"] = c.max_iters * mean
    out["total_padded_s"] = out["padded_train_s"] + evals * per_eval
    if "padding_free_train_s" in out:
        out["total_padding_free_s"] = out["padding_free_train_s"] + evals * per_eval
    return out
