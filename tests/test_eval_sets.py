"""Eval sets: another dataset's val loss at every eval, with the main val loss's definition."""

from __future__ import annotations

import pytest
import train_helpers

from mypt_jax.training import trainer
from mypt_jax.training.evals import health
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup import eval_sets


def _evals(workdir) -> list[dict]:
    return [r for r in train_helpers.read_log(workdir / "log.jsonl") if "val_loss" in r]


def _other_dataset(tmp_path):
    """A second prepared dataset with other episodes (every word said twice)."""
    import json

    from mypt_jax.data.prepare import prepare

    with (tmp_path / "other.jsonl").open("w") as f:
        for i, w in enumerate(train_helpers.WORDS * 3):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Repeat {w} twice."},
                {"role": "assistant", "content": f"{w} {w}" + "." * (i % 3)}]}) + "\n")
    prepare(tmp_path / "other.jsonl", tmp_path / "other", val_split=0.3, progress=False)
    return tmp_path / "other"


def test_a_set_s_loss_is_the_val_loss_of_a_run_on_that_dataset(tmp_path):
    main, other = train_helpers.make_dataset(tmp_path), _other_dataset(tmp_path)
    # learning_rate 0: both runs keep their (identical) initial weights, so the two numbers
    # must agree at every eval, and the set's stream must advance as the main one does.
    common = dict(max_iters=6, eval_interval=2, eval_iters=3, learning_rate=0.0, warmup_iters=0,
                  eval_prompts_file="", dropout=0.1)
    trainer.train(train_helpers.tiny_config(main, tmp_path / "a", eval_sets=f"other={other}",
                                            **common))
    trainer.train(train_helpers.tiny_config(other, tmp_path / "b", **common))
    a, b = _evals(tmp_path / "a"), _evals(tmp_path / "b")
    assert [r["iter"] for r in a] == [r["iter"] for r in b] == [0, 2, 4, 6]
    assert [r["val_loss/other"] for r in a] == [r["val_loss"] for r in b]
    assert len({r["val_loss/other"] for r in a}) > 1  # the stream moved on between evals


@pytest.mark.slow
def test_a_resumed_run_continues_each_set_s_stream(tmp_path):
    main, other = train_helpers.make_dataset(tmp_path), _other_dataset(tmp_path)
    common = dict(eval_interval=2, eval_iters=2, warmup_iters=0, eval_prompts_file="",
                  eval_sets=f"other={other}", checkpoint_interval=2)
    summary = trainer.train(train_helpers.tiny_config(main, tmp_path / "ref", max_iters=8,
                                                      **common))
    trainer.train(train_helpers.tiny_config(main, tmp_path / "run", max_iters=4, **common))
    trainer.train(train_helpers.tiny_config(main, tmp_path / "run", max_iters=8, **common))
    ref = {r["iter"]: r["val_loss/other"] for r in _evals(tmp_path / "ref")}
    run = {r["iter"]: r["val_loss/other"] for r in _evals(tmp_path / "run")}
    assert run == ref
    assert summary["eval_sets"] == {"other": {"first": ref[0], "final": ref[8]}}


def test_eval_sets_are_checked_before_training(tmp_path):
    main = train_helpers.make_dataset(tmp_path)
    assert eval_sets.parse(" a=x , b.c=y/z ") == {"a": "x", "b.c": "y/z"}
    for bad, message in (("a", "'a' is not NAME=DIR"), ("=x", "'=x' is not NAME=DIR"),
                         ("a=x,a=y", "'a' is named twice")):
        with pytest.raises(eval_sets.EvalSetsError, match=message):
            eval_sets.parse(bad)
    c = train_helpers.tiny_config(main, tmp_path / "run", eval_sets=f"gone={tmp_path}/nope")
    with pytest.raises(cfg_lib.ConfigError, match=rf"^eval_sets: gone={tmp_path}/nope: "):
        trainer.train(c)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_forgetting_red_line():
    first = {"alpha": 1.0, "beta": 2.0}
    assert health.forgetting(first, {"alpha": 1.4, "beta": 2.9}, 1.5) is None
    found = health.forgetting(first, {"alpha": 1.6, "beta": 2.9}, 1.5)
    assert found == "forgetting: val loss rose more than x1.5 on alpha 1.000 -> 1.600 (x1.60)"
    assert health.forgetting(first, {"alpha": 9.0}, 0) is None  # 0 turns it off
