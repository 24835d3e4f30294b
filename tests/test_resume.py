"""SIGKILL a CPU training run at a random step, rerun the same command: bit-identical params."""

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
