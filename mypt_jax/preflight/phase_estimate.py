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
from mypt_jax.training.compilation.shape_plan import count_shapes
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup import semantics


def bucket_mix(r: cfg_lib.Resolved, layout: batching.Layout,
               batches: int) -> dict[batching.BatchShape, float] | None:
    """Share of train steps per batch shape, from the first `batches` batches of the dataset."""
    from mypt_jax.data import inspect as data_inspect
    from mypt_jax.data import loader as data

    if batches <= 0 or not os.path.isdir(r.config.dataset_dir or ""):
        return None
    source = data.make_source(r.config.dataset_dir, "train", tokenizer=r.tokenizer,
                              process_index=0, process_count=1,
                              **data_inspect.iterator_kwargs(r.config))
    counts = count_shapes(source, layout, range(batches))  # from the episode index alone
    return {k: v / batches for k, v in counts.items()}


def eval_batches(c) -> int:
    """Batches one eval reads for its val loss and, where scored, its accuracy (eval_iters
    train and eval_iters val batches more; eval sets are not counted)."""
    return c.eval_iters * (3 if semantics.accuracy_on(c) else 1)


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

    per_eval = sum(step_s(p["roofline"]) * (eval_batches(c) if p["kind"] == "eval" else 1)
                   for p in results if p["kind"] in ("eval", "decode") and "roofline" in p)
    decode_s = sum(step_s(p["roofline"]) for p in results if p["kind"] == "decode"
                   and "roofline" in p)
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
        # The rebuilt val loss (training/evals/val_loss.py): each distinct episode of the eval's
        # batches once, at padding-free shapes. Its forward pass is costed as a third of a
        # padding-free train step (forward + backward = 3 forwards), per batch of rows.
        b = semantics.eval_rows(c)
        rows = min(val_episodes(r) or c.eval_iters * b, c.eval_iters * b)
        # The accuracy's batches are read as they come (train batches are rarely repeated).
        out["eval_batches_rebuilt"] = -(-rows // b) + eval_batches(c) - c.eval_iters
        out["eval_s_padding_free"] = out["eval_batches_rebuilt"] * mean / 3 + decode_s
    padding_free = "padding_free_train_s" in out
    run_s = (out["padding_free_train_s"] + evals * out["eval_s_padding_free"] if padding_free
             else out["padded_train_s"] + evals * per_eval)
    out.update(save_time(r, run_s))
    blocking = out["save_total_blocking_s"]
    out["total_padded_s"] = out["padded_train_s"] + evals * per_eval + blocking
    if "padding_free_train_s" in out:
        out["total_padding_free_s"] = (out["padding_free_train_s"]
                                       + evals * out["eval_s_padding_free"] + blocking)
    return out


# Stated assumptions of the save estimate, per host: a device-to-host copy of its shard of the
# state (PCIe-class), then the write to disk or bucket (what a TPU VM's persistent disk or a
# GCS upload sustains). An asynchronous save blocks the loop for the copy only.
HOST_COPY_BYTES_PER_S = 10e9
HOST_WRITE_BYTES_PER_S = 1e9


def save_time(r: cfg_lib.Resolved, run_s: float, hosts: int = 1,
              accelerator: bool = True) -> dict[str, Any]:
    """The phase's saves under its checkpoint policy (training/checkpoint/policy.py): count
    per trigger, state bytes, seconds per save blocking and writing, and the total blocking.

    `run_s` is the phase's training and eval time, which sets the time-triggered saves. The
    final save counts at its whole write time: the run waits for it. Orbax starts a save
    only once the previous one is written, so an asynchronous save blocks for its copy plus
    whatever of the previous write the steps between them did not cover.
    """
    import numpy as np

    from mypt_jax.model.param_table import param_shapes
    from mypt_jax.training.checkpoint.policy import SavePolicy

    c, mc = r.config, r.model_config
    n_params = sum(int(np.prod(s)) for s in _leaves(param_shapes(mc)))
    # Weights in their storage dtype plus AdamW's two float32 moments.
    state_bytes = n_params * (np.dtype(mc.param_dtype).itemsize + 8)
    by_trigger = SavePolicy.from_config(c).saves_in(c.max_iters, c.eval_interval, run_s)
    saves = sum(by_trigger.values())
    copy_s = state_bytes / (hosts * HOST_COPY_BYTES_PER_S)
    write_s = copy_s + state_bytes / (hosts * HOST_WRITE_BYTES_PER_S)
    is_async = c.async_checkpointing == "on" or (c.async_checkpointing == "auto" and accelerator)
    blocking_s = copy_s if is_async else write_s
    if is_async:
        blocking_s += max(write_s - copy_s - run_s / max(saves, 1), 0.0)
    return {"saves": saves, "saves_by_trigger": by_trigger, "state_bytes": state_bytes,
            "save_write_s": write_s, "save_blocking_s": blocking_s, "save_async": is_async,
            "save_total_blocking_s": (saves - 1) * blocking_s + write_s}


def _leaves(tree) -> list[tuple[int, ...]]:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


def val_episodes(r: cfg_lib.Resolved) -> int | None:
    """Episodes in the val split the loader reads, or None without the dataset."""
    from mypt_jax.data.dataset import EpisodeSplit

    if not os.path.isdir(r.config.dataset_dir or ""):
        return None
    return len(EpisodeSplit.load(r.config.dataset_dir, "val", tokenizer=r.tokenizer,
                                 episode_min_tokens=r.config.episode_min_tokens,
                                 use_loss_mask=r.config.use_loss_mask))
