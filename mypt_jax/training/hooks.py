"""Hooks: everything the loop does besides the update, each a function plus when it runs.

A hook runs at a step `s`: after the update that produced the weights of step `s` (`s`
updates done) and before the next one. When it runs is one of:
- `every=N`: at the steps divisible by N;
- `seconds=S`: at a log flush once S seconds of process 0's wall-clock have passed since it
  last ran. Process 0 decides and every process learns it at the same step, so a hook that
  writes a checkpoint saves the same step everywhere;
- `when=f`: where `f(info)` says so (the save policy);
- `at_end=True`: once more after the last update, with `info.final` set.

Hooks run in the order they are registered (`trainer.register_hooks` is the table). A hook
with `sync=True` first fetches the metrics still in flight, so a NaN stops the run before it.
A hook's seconds are kept under its `category` (the summary's goodput table) and left out of
the step time; each runs inside a profiler range named after it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

clock = time.monotonic  # the wall clock of `seconds` hooks (tests stop it on one process)


@dataclasses.dataclass(frozen=True)
class StepInfo:
    step: int  # updates done: `state` holds the weights after `step` updates
    state: Any  # the train state, on the devices
    start: int  # the step this process started from
    elapsed_s: float  # wall-clock since the run started
    window: Any = None  # the log window's steps so far (observe/step_stats.StepWindow)
    final: bool = False  # the end: after the last update


@dataclasses.dataclass
class Hook:
    name: str
    fn: Callable[[StepInfo], Any]
    every: int = 0
    seconds: float = 0.0
    when: Callable[[StepInfo], bool] | None = None
    at_end: bool = False
    sync: bool = False  # fetch the pending metrics first (a NaN stops the run before it)
    category: str | None = None  # goodput category; None = step time
    last_run: float = dataclasses.field(default_factory=lambda: clock())


class Hooks:
    def __init__(self, flush: Callable[[], None], flush_every: int):
        self._hooks: list[Hook] = []
        self._flush = flush  # fetches every dispatched step's metrics (raises on a NaN)
        self._flush_every = flush_every  # the log window: where `seconds` hooks are agreed
        self.seconds: dict[str, float] = defaultdict(float)  # category -> seconds spent
        self.paused_s = 0.0  # categorised seconds since the last `take_paused`

    def add(self, name: str, fn: Callable[[StepInfo], Any], **when) -> Hook:
        hook = Hook(name, fn, **when)
        self._hooks.append(hook)
        return hook

    def names(self) -> list[str]:
        return [h.name for h in self._hooks]

    def reset_clock(self, name: str) -> None:
        """Restarts a `seconds` hook's wait (a save of another trigger resets the time save)."""
        for h in self._hooks:
            if h.name == name:
                h.last_run = clock()

    def _time_due(self, hooks: list[Hook]) -> set[str]:
        """The `seconds` hooks whose time has come by process 0's clock."""
        now = clock()
        due_P = np.asarray([now - h.last_run >= h.seconds for h in hooks], np.int32)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            due_P = np.asarray(multihost_utils.broadcast_one_to_all(due_P))
        return {h.name for h, due in zip(hooks, due_P, strict=True) if due}

    def _is_due(self, hook: Hook, info: StepInfo, by_time: set[str]) -> bool:
        if info.final:
            return hook.at_end
        return bool((hook.every and info.step % hook.every == 0) or hook.name in by_time
                    or (hook.when is not None and hook.when(info)))

    def run(self, info: StepInfo) -> None:
        """Runs the hooks due at `info.step` in order; a `when` is asked after the hooks
        before it ran (the save policy sees this step's eval)."""
        timed = [h for h in self._hooks if h.seconds]
        by_time = (self._time_due(timed) if timed and not info.final
                   and info.step % self._flush_every == 0 else set())
        for hook in self._hooks:
            if not self._is_due(hook, info, by_time):
                continue
            if hook.sync:
                self._flush()
            t0 = time.perf_counter()
            with jax.profiler.TraceAnnotation(f"hook:{hook.name}"):
                hook.fn(info)
            hook.last_run = clock()
            if hook.category is not None:
                spent = time.perf_counter() - t0
                self.seconds[hook.category] += spent
                self.paused_s += spent

    def take_paused(self) -> float:
        """Categorised hook seconds since the last call (the step window leaves them out)."""
        paused, self.paused_s = self.paused_s, 0.0
        return paused
