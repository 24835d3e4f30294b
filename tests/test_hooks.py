"""The hooks and the loop's table of them (training/hooks.py, trainer.register_hooks).

The loop and the registered hooks run here over stand-ins for the devices, the log, the
evals and the checkpoints, which record what was called at which step with which weights
(a counter of updates), so each ordering rule of `register_hooks` is checked as stated.
"""

from __future__ import annotations

import math
import types

import pytest

from mypt_jax.training import hooks as hooks_lib
from mypt_jax.training import trainer
from mypt_jax.training.checkpoint.policy import SavePolicy
from mypt_jax.training.checkpoint.preemption import Preempted
from mypt_jax.training.checkpoint.run_state import RunState


class Weights:
    """The train state: `params` is the number of updates applied."""

    def __init__(self, updates: int):
        self.params = updates


class Fakes:
    def __init__(self, calls: list, *, nan_at: int | None = None, preempt_at: int | None = None):
        self.calls, self.nan_at, self.preempt_at = calls, nan_at, preempt_at
        self.step = 0  # the weights' updates so far (the watcher's point)
        self.pending: list[tuple[int, float]] = []
        self.window = types.SimpleNamespace(exclude=lambda s: None)
        self.signal_name = "SIGTERM"
        self.late: list = []
        self.waited_s = 0.0  # the programs' waits for compiles behind the steps

    # --- the step log
    def dispatched(self, step, metrics, info):
        self.pending.append((step, metrics["train_loss"]))

    def take_train_loss(self):
        return None

    def flush(self, force=False):
        fetched, self.pending = self.pending, []
        self.calls.append(("flush", len(fetched)))
        for step, loss in fetched:
            if not math.isfinite(loss):
                raise FloatingPointError(f"train loss is nan at step {step}")

    # --- the programs and the feed
    def call(self, kind, shape, state, batch, hyper):
        loss = math.nan if state.params == self.nan_at else 1.0
        self.calls.append(("update", state.params + 1))
        self.step = state.params + 1
        return Weights(state.params + 1), {"train_loss": loss}

    def next(self):
        return None, types.SimpleNamespace(shape="s")

    # --- the preemption watcher
    def requested(self):
        return self.step == self.preempt_at


class FakeSaver:
    def __init__(self, calls, run_state: RunState, policy: SavePolicy):
        self.calls, self.run, self.policy = calls, run_state, policy
        self.time_due = False

    def triggers(self, step):
        if step == self.run.last_saved:
            return []
        return self.policy.triggers(step, evaluated=self.run.evaluated_at(step),
                                    time_due=self.time_due)

    def mark_time_due(self, info=None):
        self.time_due = True

    def save(self, step, state, triggers, finished=False, summary=None):
        self.calls.append(("save", step, state.params, tuple(triggers),
                           self.run.evaluated_at(step)))
        self.run.last_saved, self.time_due = step, False

    def log_committed(self, wait=False):
        pass

    def preempted(self, step, state, signal_name, trained=True):
        self.calls.append(("preempt", step, state.params))
        raise Preempted(step, signal_name, "ckpt")


def _run(calls, *, max_iters=8, log_interval=4, eval_interval=4, policy=None, nan_at=None,
         preempt_at=None):
    policy = policy or SavePolicy()
    fakes = Fakes(calls, nan_at=nan_at, preempt_at=preempt_at)
    state = RunState()

    def evaluate(step, params, run_state, final=False):
        calls.append(("eval", step, params))
        run_state.record_eval(step, 1.0, {})
        run_state.last_eval = {"iter": step, "val_loss": 1.0}
        return {"iter": step, "val_loss": 1.0}

    c = types.SimpleNamespace(max_iters=max_iters, log_interval=log_interval,
                              eval_interval=eval_interval, checkpoint_minutes=policy.minutes)
    run = types.SimpleNamespace(
        r=types.SimpleNamespace(config=c), c=c, start=0, t_start=0.0, state=state,
        train_state=Weights(0), step_log=fakes, feed=fakes, watcher=fakes, shapes_seen=set(),
        planned=types.SimpleNamespace(programs=fakes), step_fn=types.SimpleNamespace(hyper=None),
        profiler=types.SimpleNamespace(on_step=lambda i: None),
        evaluator=types.SimpleNamespace(run=evaluate), writer=None, late_compile_s=0.0,
        gold=None, train_position_of=lambda update: update, hand_off=False)
    run.saver = FakeSaver(calls, state, policy)
    return run


def test_the_eval_of_step_s_sees_s_updates_and_runs_before_update_s_plus_1():
    calls = []
    run = _run(calls, policy=SavePolicy(at_eval=True))
    trainer._loop(run, trainer.register_hooks(run))
    calls[:] = [c for c in calls if c != ("flush", 0)]  # forced flushes with nothing pending
    evals = [c for c in calls if c[0] == "eval"]
    assert evals == [("eval", 0, 0), ("eval", 4, 4)]  # step 8 = max_iters is the end's
    i = calls.index(("eval", 4, 4))
    assert calls[i - 2:i] == [("update", 4), ("flush", 4)] and calls[i + 2] == ("update", 5)
    # ... and the save after it records the eval (a save at an eval, the upstream's order).
    assert calls[i + 1] == ("save", 4, 4, ("eval",), True)


def test_the_log_is_flushed_before_every_save_and_eval():
    calls = []
    run = _run(calls, log_interval=100, policy=SavePolicy(interval=3))
    trainer._loop(run, trainer.register_hooks(run))
    for i, call in enumerate(calls):
        if call[0] in ("save", "eval") and call[1] > 0:
            assert calls[i - 1][0] == "flush" or calls[i - 2][0] == "flush", calls[i - 3:i + 1]
    assert [c[1] for c in calls if c[0] == "save"] == [3, 6]
    assert ("flush", 3) in calls  # the save at 3 fetched updates 1-3 although no log line was due


@pytest.mark.parametrize("log_interval", [5, 100])
def test_a_nan_stops_the_run_before_any_save(log_interval):
    """Update 5 (from 4 to 5) is NaN and step 5 is due to save: no save of it happens,
    whether the log window ends there or not."""
    calls = []
    run = _run(calls, log_interval=log_interval, policy=SavePolicy(interval=5), nan_at=4)
    with pytest.raises(FloatingPointError, match="step 4"):
        trainer._loop(run, trainer.register_hooks(run))
    assert [c for c in calls if c[0] == "save"] == []
    assert calls[-1][0] == "flush"


def test_a_preemption_saves_after_the_step_in_flight():
    calls = []
    run = _run(calls, preempt_at=4, policy=SavePolicy(at_eval=True))
    with pytest.raises(Preempted):
        trainer._loop(run, trainer.register_hooks(run))
    calls[:] = [c for c in calls if c != ("flush", 0)]  # forced flushes with nothing pending
    # The signal came during update 4: that update finishes, its metrics are fetched, and the
    # save holds the weights after 4 updates; step 4's eval (and its save) never run.
    assert calls[-3:] == [("update", 4), ("flush", 4), ("preempt", 4, 4)]
    assert [c for c in calls if c[0] == "eval"] == [("eval", 0, 0)]


def test_the_table_names_every_concern_once_in_order():
    run = _run([], policy=SavePolicy(minutes=1.0))
    names = trainer.register_hooks(run).names()
    assert names == ["log", "save_clock", "saves_committed", "profiler", "preemption", "eval",
                     "late_compile", "export", "save"]
    assert "save_clock" not in trainer.register_hooks(_run([])).names()  # minutes=0: off


# ----------------------------------------------------------------------------- the runner


def _hooks(calls, flush_every=2):
    hooks = hooks_lib.Hooks(flush=lambda: calls.append("flush"), flush_every=flush_every)
    return hooks


def _info(step, final=False):
    return hooks_lib.StepInfo(step, None, 0, 0.0, None, final=final)


def test_every_when_and_at_end():
    calls = []
    hooks = _hooks(calls)
    hooks.add("a", lambda i: calls.append(("a", i.step)), every=3)
    hooks.add("b", lambda i: calls.append(("b", i.step)), when=lambda i: i.step == 4,
              at_end=True)
    for step in range(1, 7):
        hooks.run(_info(step))
    hooks.run(_info(7, final=True))
    assert calls == [("a", 3), ("b", 4), ("a", 6), ("b", 7)]


def test_a_sync_hook_flushes_first_and_its_seconds_are_counted(monkeypatch):
    calls = []
    hooks = _hooks(calls)
    clock = iter([10.0, 12.5, 20.0, 21.0])
    monkeypatch.setattr(hooks_lib.time, "perf_counter", lambda: next(clock))
    hooks.add("save", lambda i: calls.append("save"), every=1, sync=True,
              category="save_blocking")
    hooks.run(_info(1))
    hooks.run(_info(2))
    assert calls == ["flush", "save", "flush", "save"]
    assert hooks.seconds["save_blocking"] == 3.5 and hooks.take_paused() == 3.5
    assert hooks.take_paused() == 0.0


def test_seconds_hooks_are_decided_at_a_log_flush_by_process_0(monkeypatch):
    """Process 0's clock decides and is broadcast; other steps never read a clock."""
    calls, now = [], [0.0]
    monkeypatch.setattr(hooks_lib, "clock", lambda: now[0])
    hooks = _hooks(calls, flush_every=5)
    hooks.add("clock", lambda i: calls.append(("clock", i.step)), seconds=60)
    broadcasts = []

    def broadcast(due_P):  # process 0 says due, whatever this process's clock says
        broadcasts.append(list(due_P))
        return due_P * 0 + 1

    monkeypatch.setattr(hooks_lib.jax, "process_count", lambda: 2)
    from jax.experimental import multihost_utils

    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    for step in range(1, 11):
        hooks.run(_info(step))
    assert calls == [("clock", 5), ("clock", 10)]  # this process's clock never reached 60 s
    assert broadcasts == [[0], [0]]  # asked at the two flush steps only
