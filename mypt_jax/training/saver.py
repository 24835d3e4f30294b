"""The run's saves: when the policy says, at a preemption, at the end; each logged with its
trigger once committed, and the last good one named when a NaN stops the run."""

from __future__ import annotations

from typing import Any

from mypt_jax.training.checkpoint import preemption
from mypt_jax.training.checkpoint.manager import Checkpointer
from mypt_jax.training.checkpoint.policy import SavePolicy
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.observe.metrics import MetricsWriter


class Saver:
    def __init__(self, ckpt: Checkpointer, policy: SavePolicy, run: RunState,
                 writer: MetricsWriter):
        self.ckpt, self.policy, self.run, self.writer = ckpt, policy, run, writer
        self.time_due = False  # set by the save clock (a `seconds` hook), cleared by any save

    def mark_time_due(self, _info=None) -> None:
        self.time_due = True

    def triggers(self, step: int) -> list[str]:
        if step == self.run.last_saved:
            return []
        return self.policy.triggers(step, evaluated=self.run.evaluated_at(step),
                                    time_due=self.time_due)

    def save(self, step: int, state: Any, triggers: list[str], *, finished: bool = False,
             summary: dict | None = None) -> None:
        run = self.run
        run.step, run.finished, run.summary = step, finished, summary
        triggers = [*triggers, "best"] if run.best_if_saved() else list(triggers)
        run.saving(triggers)
        self.ckpt.save(step, state, meta=run.to_meta(triggers))
        self.time_due = False

    def log_committed(self, wait: bool = False) -> None:
        """One `event: save` line per committed save: its trigger, how long the loop was
        blocked, and how much of the write overlapped the steps."""
        self.ckpt.poll(wait=wait)
        for timing in self.ckpt.timings:
            self.writer.write({"iter": timing["step"], "event": "save", **timing})
        self.ckpt.timings.clear()

    def nan_stop(self, what: str, value: float, step: int) -> None:
        self.ckpt.wait()
        last = self.run.last_saved
        where = f"step {last} at {self.ckpt.path(last)}" if last is not None else "none"
        self.writer.write({"iter": step, "event": "nan", "error": f"{what} is {value}",
                           "last_good_checkpoint": where})
        raise FloatingPointError(f"{what} is {value} at step {step}; last good checkpoint: {where}")

    def preempted(self, step: int, state: Any, signal_name: str, trained: bool = True) -> None:
        """Saves `step` (the weights after `step` updates), waits for the commit, raises.
        Before anything was `trained` the resume point is on disk already (or there is none:
        a fresh run starts over), so nothing is saved."""
        if trained and step != self.run.last_saved:
            self.save(step, state, ["preempt"])
        self.log_committed(wait=True)  # waits for the commit; a failed write raises here
        last = self.run.last_saved
        where = None if last is None else str(self.ckpt.path(last))
        self.writer.write({"iter": step, "event": "preempted", "signal": signal_name,
                           "checkpoint": where, "saved": trained})
        raise preemption.Preempted(step, signal_name, where, saved=trained)
