"""The checkpoint policy in real runs: a resume from a temporary (time-triggered) checkpoint is
as exact as from any other (training/checkpoint/policy.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import train_helpers

from mypt_jax.training import saver as saver_lib
from mypt_jax.training import trainer

OVERRIDES = {"max_iters": 30, "eval_interval": 10, "log_interval": 2, "eval_iters": 1,
             "dropout": 0.1, "tensorboard": False, "eval_prompts_file": "", "keep_best": 0,
             "checkpoint_interval": 0, "checkpoint_at_eval": False}


@pytest.mark.slow
def test_a_resume_from_a_temporary_checkpoint_is_exact(tmp_path, monkeypatch):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    trainer.train(train_helpers.tiny_config(dataset, ref, checkpoint_minutes=0.0, **OVERRIDES))

    # The run dies as it starts its final save: what is left is its newest time save.
    save = saver_lib.Saver.save

    def crash_at_the_end(self, step, state, triggers, **kw):
        if "final" in triggers:
            raise RuntimeError("host lost")
        return save(self, step, state, triggers, **kw)

    monkeypatch.setattr(saver_lib.Saver, "save", crash_at_the_end)
    config = train_helpers.tiny_config(dataset, crashed, checkpoint_minutes=0.0005, **OVERRIDES)
    with pytest.raises(RuntimeError, match="host lost"):
        trainer.train(config)
    monkeypatch.setattr(saver_lib.Saver, "save", save)
    log = train_helpers.read_log(crashed / "log.jsonl")
    saves = [r for r in log if r.get("event") == "save"]
    assert saves and {r["trigger"] for r in saves} == {"time"}
    (left,) = [int(p.name) for p in (crashed / "checkpoints").iterdir()]
    assert left == saves[-1]["step"] < 30  # the older time saves are gone

    summary = trainer.train(config)
    assert summary["resumed_from"] == left
    jax.tree.map(np.testing.assert_array_equal, train_helpers.final_params(ref),
                 train_helpers.final_params(crashed))
    losses = {}
    for path in (ref, crashed):
        losses[path] = {r["iter"]: r["train_loss"] for r in train_helpers.read_log(
            path / "log.jsonl") if "train_loss" in r and r["iter"] >= left}
    assert losses[ref] == losses[crashed] and losses[ref]
