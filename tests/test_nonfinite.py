"""A step whose loss and gradient are finite but whose update is not stops the run at that step,
before any save can store its weights (issue 32, case 3)."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_helpers

from mypt_jax.training.observe.step_log import nonfinite
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts


def test_update_norm_and_the_checks_name_the_first_non_finite_quantity():
    tree = {"a": jnp.ones((3, 2)), "b": {"c": jnp.full((4,), 2.0, jnp.bfloat16)}}
    assert float(ts.update_norm(tree)) == pytest.approx(math.sqrt(6 + 16))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        broken = {**tree, "a": tree["a"].at[1, 0].set(bad)}
        assert not math.isfinite(float(ts.update_norm(broken)))
    ok = {"train_loss": 2.0, "grad_norm": 0.5, "update_norm": 1e-3, "lr": 1e-3}
    assert nonfinite(ok) is None
    assert nonfinite({**ok, "update_norm": math.nan})[0] == "optimizer update norm"
    assert nonfinite({**ok, "grad_norm": math.inf, "update_norm": math.nan}) == (
        "gradient norm", math.inf)
    assert nonfinite({**ok, "train_loss": math.nan, "grad_norm": math.nan})[0] == "train loss"


class _Count(NamedTuple):
    count: jax.Array


def _nan_update_at(bad_update: int) -> optax.GradientTransformation:
    """Passes updates through, except update number `bad_update` (0-based): all NaN."""

    def update(updates, state, params=None):
        del params
        updates = jax.tree.map(lambda u: jnp.where(state.count == bad_update, jnp.nan, u), updates)
        return updates, _Count(state.count + 1)

    return optax.GradientTransformation(lambda _: _Count(jnp.zeros((), jnp.int32)), update)


# which save follows the bad update: (max_iters, checkpoint_interval, bad update, preempt at)
CASES = {
    "interval": (12, 4, 7, None),  # the interval save at step 8 holds its weights
    "final": (8, 0, 7, None),  # the final save
    "preempt": (12, 0, 5, 6),  # a preemption at step 6 (the log window flushed at 5)
}


# "final" is slow: the end's eval (a NaN val loss) already stopped the run before the final save
@pytest.mark.parametrize("case", ["interval", "preempt", pytest.param("final", marks=pytest.mark.slow)])
def test_a_non_finite_update_stops_the_run_before_any_save(tmp_path, monkeypatch, case):
    from mypt_jax.training import trainer

    max_iters, interval, bad, preempt_at = CASES[case]
    build = optim.Optimizer.build

    def build_with_nan(self, values=None):
        tx, schedule = build(self, values)
        return optax.chain(tx, _nan_update_at(bad)), schedule

    monkeypatch.setattr(optim.Optimizer, "build", build_with_nan)
    if preempt_at is not None:
        check = trainer._check_preemption

        def signal_at(run, info):  # as if SIGTERM came during update `preempt_at`
            if info.step == preempt_at:
                run.watcher.signal_name = "SIGTERM"
            check(run, info)

        monkeypatch.setattr(trainer, "_check_preemption", signal_at)
    dataset = train_helpers.make_dataset(tmp_path)
    workdir = tmp_path / "run"
    c = train_helpers.tiny_config(dataset, workdir, max_iters=max_iters, eval_interval=100,
                                  checkpoint_interval=interval, checkpoint_minutes=0.0,
                                  log_interval=5, eval_prompts_file="", warmup_iters=0, n_layer=1)
    with pytest.raises(FloatingPointError) as err:
        trainer.train(c)
    good = r"step 4 at \S+/checkpoints/4" if case == "interval" else "none"
    assert re.fullmatch(rf"optimizer update norm is nan at step {bad}; last good checkpoint: "
                        rf"{good}", str(err.value)), str(err.value)
    ckpts = workdir / "checkpoints"
    saved = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []
    assert saved == ([4] if case == "interval" else [])
    for step in saved:
        params = train_helpers.final_params(workdir, step)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params)), step
    log = train_helpers.read_log(workdir / "log.jsonl")
    assert log[-1]["event"] == "nan" and log[-1]["iter"] == bad
    assert log[-1]["error"] == "optimizer update norm is nan"
    steps = [r["iter"] for r in log if "train_loss" in r]
    assert all(s < bad for s in steps) and all(np.isfinite(r["train_loss"]) for r in log
                                               if "train_loss" in r)
