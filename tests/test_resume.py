"""SIGKILL a CPU training run at a random step, rerun the same command: bit-identical params."""

import json
import random
import signal

import jax
import numpy as np
import pytest
import train_helpers

OVERRIDES = {
    "max_iters": 16, "eval_interval": 5, "checkpoint_interval": 5, "log_interval": 1,
    "eval_iters": 1, "dropout": 0.1, "n_embd": 32, "block_size": 32, "batch_size": 8,
    "tensorboard": False, "eval_prompts_file": "",
    # Every padding-free layout on: rows cut to buckets, trained positions only, packed.
    "length_buckets": "(29,30)", "pack_episodes": True,
}


def _cli(dataset, workdir):
    return train_helpers.train_cli(
        "configs/cpu_tiny.py", workdir, {**OVERRIDES, "dataset_dir": dataset})


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    out = train_helpers.run_module(_cli(dataset, ref))
    assert out.returncode == 0, out.stderr[-3000:]

    # The run SIGKILLs itself as it starts update `kill_at` (strictly between the checkpoints
    # at 5 and 15; async saves may be in flight): the same step whatever the machine's load,
    # where a watcher polling the log would race the run.
    kill_at = random.Random().randint(6, 14)
    out = train_helpers.run_module(train_helpers.signalled(_cli(dataset, killed), kill_at, "SIGKILL"))
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    steps = [r["iter"] for r in train_helpers.read_log(killed / "log.jsonl") if "train_loss" in r]
    assert max(steps) < kill_at, (kill_at, steps)

    out = train_helpers.run_module(_cli(dataset, killed))
    assert out.returncode == 0, out.stderr[-3000:]
    log = train_helpers.read_log(killed / "log.jsonl")
    assert [r["resumed"] for r in log if r.get("event") == "start"] == [False, True]

    a, b = train_helpers.final_params(ref), train_helpers.final_params(killed)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    ref_losses = {r["iter"]: r["train_loss"] for r in train_helpers.read_log(ref / "log.jsonl")
                  if "train_loss" in r}
    new_losses = {r["iter"]: r["train_loss"] for r in log if "train_loss" in r}
    assert all(new_losses[k] == ref_losses[k] for k in new_losses)
    buckets = {b for r in log for b in r.get("buckets", [])}
    assert buckets and all(b.endswith("/packed") for b in buckets), buckets

    # A finished run rerun only reports.
    out = train_helpers.run_module(_cli(dataset, killed))
    assert out.returncode == 0 and "nothing to do" in out.stdout, out.stdout[-2000:]



# dc62a0c: evals draw training microbatches, so the train stream's position is not a function
# of the step alone; the resume point must carry it (training/setup/semantics.py).
# Its accuracy history and GOLD selection state continue across the resume too.
NEWER = {"upstream_semantics": "dc62a0c", "grad_accum_steps": 2, "batch_size": 16,
         "eval_interval": 2, "eval_iters": 1, "saturation_check": True, "saturation_window": 2,
         "saturation_min_steps": 0, "gold_selection": "val_loss"}


@pytest.mark.parametrize("loop", [{"eval_interval": 2, "token_accuracy": True}, NEWER],
                         ids=["ours", "dc62a0c"])
def test_a_resumed_run_takes_the_uninterrupted_runs_next_batches(tmp_path, loop):
    """In-process and short, the fast tier's resume check: 4 steps, then a rerun of the same
    config to 6, against 6 steps in one go; the resumed steps' losses are the same numbers."""
    from mypt_jax.training import trainer

    dataset = train_helpers.make_dataset(tmp_path, n=20)

    def config(workdir, steps):
        return train_helpers.tiny_config(dataset, workdir, max_iters=steps,
                                         checkpoint_interval=2, warmup_iters=1, log_interval=1,
                                         eval_prompts_file="", dropout=0.1, **loop)

    trainer.train(config(tmp_path / "ref", 6))
    assert trainer.train(config(tmp_path / "run", 4))["resumed_from"] is None
    assert trainer.train(config(tmp_path / "run", 6))["resumed_from"] == 4
    losses = {}
    for name in ("ref", "run"):
        log = train_helpers.read_log(tmp_path / name / "log.jsonl")
        losses[name] = {r["iter"]: r["train_loss"] for r in log if "train_loss" in r}
    assert sorted(losses["run"]) == list(range(6))
    assert [losses["run"][i] for i in (4, 5)] == [losses["ref"][i] for i in (4, 5)]
    if "gold_selection" in loop:
        metas = {name: json.loads((tmp_path / name / "checkpoints" / "6" / "meta" / "metadata"
                                   ).read_text()) for name in ("ref", "run")}
        for key in ("accuracy", "gold"):
            assert metas["run"][key] == metas["ref"][key], key
        assert len(metas["run"]["gold"]["val_history"]) == 4  # steps 0, 2, 4 and the final 6
        assert len(metas["run"]["accuracy"]["history"]) == 4
