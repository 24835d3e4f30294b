"""When a run saves, and which of its saves stay.

Triggers, each logged with its save (`event: save`, `trigger`):
- `time`: every `checkpoint_minutes` of wall-clock since the last save. Temporary: removed
  once a newer save commits. Process 0's clock decides, at a log flush, and every process
  learns it there, so all of them save the same step (a `seconds` hook, training/hooks.py).
- `interval`: every `checkpoint_interval` steps (step 0 excluded). Permanent: kept whatever
  `keep_checkpoints` says.
- `eval`: at every eval (`checkpoint_at_eval`), the upstream's cadence.
- `preempt`: SIGTERM/SIGINT, after the step in flight (training/checkpoint/preemption.py).
- `final`: the last step, always.
- `best`: added to a save's triggers when it holds the lowest val loss of the run's saves;
  `keep_best` ranks the saves made anyway and never adds one.

Retention: the newest save, the newest `keep_checkpoints` saves that are not temporary, every
`interval` save and the `keep_best` lowest val losses. A checkpoint written before triggers
were recorded counts as an `eval` save.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from mypt_jax.training.checkpoint.run_meta import meta_path
from mypt_jax.training.checkpoint.run_state import RunState

TRIGGERS = ("time", "interval", "eval", "best", "preempt", "final")


@dataclasses.dataclass(frozen=True)
class SavePolicy:
    minutes: float = 0.0  # checkpoint_minutes: temporary saves on wall-clock; 0 = off
    interval: int = 0  # checkpoint_interval: permanent saves every N steps; 0 = off
    at_eval: bool = False  # checkpoint_at_eval: a save at every eval (the upstream)

    @classmethod
    def from_config(cls, c) -> SavePolicy:
        return cls(float(c.checkpoint_minutes), int(c.checkpoint_interval),
                   bool(c.checkpoint_at_eval))

    def triggers(self, step: int, *, evaluated: bool, time_due: bool) -> list[str]:
        """The reasons to save `step`, the permanent one first; [] = no save."""
        out = []
        if self.interval and step > 0 and step % self.interval == 0:
            out.append("interval")
        if self.at_eval and evaluated:
            out.append("eval")
        if time_due:
            out.append("time")
        return out

    def saves_in(self, max_iters: int, eval_interval: int, run_s: float) -> dict[str, int]:
        """How many saves of each trigger a run of `max_iters` steps makes, the final one
        included (a prediction: the time saves assume `run_s` seconds spread evenly)."""
        counts = {"final": 1}
        if self.interval:
            counts["interval"] = (max_iters - 1) // self.interval  # the last one is the final
        if self.at_eval:
            counts["eval"] = (max_iters - 1) // eval_interval + 1  # step 0 on, the end's apart
        if self.minutes:
            counts["time"] = int(run_s // (self.minutes * 60))
        return counts


@dataclasses.dataclass
class Retention:
    """orbax's preservation policy for our triggers (see the module docstring)."""

    keep: int
    keep_best: int
    read_meta: Callable[[int], dict | None]  # a committed step's JSON record, or None
    known: dict[int, tuple[tuple[str, ...], float | None]] = dataclasses.field(
        default_factory=dict)  # step -> (triggers, val loss), from this run's saves

    def note(self, step: int, meta: dict) -> None:
        """A save being made: its record ranks it (no read back from disk)."""
        self.known[step] = RunState.save_ranking(meta)

    def _info(self, step: int) -> tuple[tuple[str, ...], float | None]:
        if step not in self.known:
            self.known[step] = RunState.save_ranking(self.read_meta(step) or {})
        return self.known[step]

    def kept(self, steps: Sequence[int]) -> set[int]:
        info = {s: self._info(s) for s in steps}
        kept = {max(steps)} if steps else set()
        lasting = sorted(s for s in steps if set(info[s][0]) - {"time", "best"})
        kept |= set(lasting[-self.keep:]) if self.keep else set()
        kept |= {s for s in steps if "interval" in info[s][0]}
        ranked = sorted((v, s) for s in steps if (v := info[s][1]) is not None)
        kept |= {s for _, s in ranked[: self.keep_best]}
        return kept

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        del context
        kept = self.kept([c.step for c in checkpoints])
        return [c.step in kept for c in checkpoints]


def meta_reader(directory) -> Callable[[int], dict | None]:
    """A committed step's JSON record in `directory` (checkpoints/), read without orbax; None
    where it cannot be read."""

    def read(step: int) -> dict | None:
        path = meta_path(directory, step)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    return read
