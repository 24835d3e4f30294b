"""The run's host-side state: what a checkpoint restores besides the arrays.

`RunState` is the only writer (`to_meta`) and reader (`from_meta`) of a checkpoint's JSON
record. The record's keys are the ones checkpoints have always carried (a checkpoint written
before this module resumes), plus `trigger`, `triggers`, `best` and `saves`.

The train stream's position follows from the step: each update reads `train_per_step` draws
(one global batch; grad_accum_steps microbatches under the dc62a0c semantics), so it is
`step * train_per_step + train_offset`. The offset is 0 for a run that started from draw 0,
and grows where dc62a0c evals draw from the stream (training/setup/semantics.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

META_KEYS = ("step", "config", "model_config", "tokenizer", "evaluated", "metrics",
             "val_history", "first_val_loss", "first_eval_sets", "finished", "summary",
             "data_identity", "data_position", "trigger", "triggers", "best", "saves",
             "accuracy", "gold")


@dataclasses.dataclass
class RunState:
    step: int = 0  # updates done
    train_offset: int = 0  # the train stream's next draw minus `step * train_per_step`
    train_per_step: int = 1  # train-stream draws an update reads
    val_position: int = 0  # the val stream's next global batch
    set_positions: dict[str, int] = dataclasses.field(default_factory=dict)  # eval set -> next batch
    val_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, val)
    first_val_loss: float | None = None  # at the run's first eval
    first_sets: dict[str, float] = dataclasses.field(default_factory=dict)  # each set's first loss
    last_eval: dict[str, Any] = dataclasses.field(default_factory=dict)  # newest eval record, no gen
    best: tuple[int, float] | None = None  # (step, val loss) of the lowest-loss save
    saves: list[dict] = dataclasses.field(default_factory=list)  # {step, trigger}, oldest first
    accuracy_position: int = 0  # our accuracy pass's own train reader (evals/accuracy.py)
    # The saturation flags' history and first step (evals/saturation.py).
    saturation: dict = dataclasses.field(
        default_factory=lambda: {"history": [], "first_step": None})
    gold: dict | None = None  # the GOLD selection's state (evals/gold.py)
    last_saved: int | None = None
    finished: bool = False
    summary: dict | None = None  # the finished run's summary
    # The run's identity, the same in each of its checkpoints:
    config: dict = dataclasses.field(default_factory=dict)
    model_config: dict = dataclasses.field(default_factory=dict)
    tokenizer: dict | None = None
    data_identity: dict | None = None

    @property
    def train_position(self) -> int:
        return self.train_position_at(self.step)

    def train_position_at(self, step: int) -> int:
        """The train stream's next draw once `step` updates are done (`step` is only
        recorded at a save)."""
        return step * self.train_per_step + self.train_offset

    def evaluated_at(self, step: int) -> bool:
        """The newest eval is of the weights of `step`."""
        return bool(self.last_eval) and self.last_eval.get("iter") == step

    def eval_due(self, step: int, eval_interval: int) -> bool:
        """The loop evaluates the weights of `step` (before the next update): an eval step not
        evaluated yet (a resume after an eval's save does not repeat it)."""
        return step % eval_interval == 0 and not self.evaluated_at(step)

    def record_eval(self, step: int, val_loss: float, set_losses: dict[str, float]) -> None:
        """The val history and the run's first losses; the eval's whole record (`last_eval`)
        is its evaluator's to set, once the record is complete."""
        self.val_history.append((step, val_loss))
        if self.first_val_loss is None:
            self.first_val_loss = val_loss
            self.first_sets = dict(set_losses)

    def best_if_saved(self) -> bool:
        """A save now would hold the lowest val loss of the run's saves."""
        if not self.evaluated_at(self.step):
            return False
        return self.best is None or self.last_eval["val_loss"] < self.best[1]

    def saving(self, triggers: list[str]) -> None:
        """Records a save of this step (before `to_meta`, so that its record lists it)."""
        self.last_saved = self.step
        if "best" in triggers:
            self.best = (self.step, self.last_eval["val_loss"])
        self.saves.append({"step": self.step, "trigger": triggers[0]})

    def data_position(self) -> dict[str, int]:
        return {"train": self.train_position, "val": self.val_position,
                **{f"val/{n}": p for n, p in self.set_positions.items()}}

    def to_meta(self, triggers: list[str]) -> dict[str, Any]:
        evaluated = self.evaluated_at(self.step)
        return {
            "step": self.step,
            "config": self.config,
            "model_config": self.model_config,
            "tokenizer": self.tokenizer,
            "evaluated": evaluated,
            "metrics": dict(self.last_eval) if evaluated else {},
            "val_history": [list(x) for x in self.val_history],
            "first_val_loss": self.first_val_loss,
            "first_eval_sets": self.first_sets,
            "finished": self.finished,
            "summary": self.summary,
            "data_identity": self.data_identity,
            "data_position": self.data_position(),
            "trigger": triggers[0] if triggers else None,
            "triggers": list(triggers),
            "best": None if self.best is None else list(self.best),
            "saves": self.saves,
            "accuracy": {"position": self.accuracy_position, **self.saturation},
            "gold": self.gold,
        }

    @staticmethod
    def save_ranking(meta: dict[str, Any]) -> tuple[tuple[str, ...], float | None]:
        """A record's save triggers (a record written before they were: an eval save) and the
        val loss that ranks it, None where its step was not evaluated."""
        val = (meta.get("metrics") or {}).get("val_loss") if meta.get("evaluated") else None
        return tuple(meta.get("triggers") or ("eval",)), val

    @classmethod
    def from_meta(cls, meta: dict[str, Any], train_per_step: int = 1) -> RunState:
        """A checkpoint's record; one written before `data_position` existed reads its
        positions from `meta["data_position"]` filled in by the checkpointer.
        `train_per_step`: the run's draws per update (the semantics it resumes with)."""
        step = int(meta["step"])
        position = meta.get("data_position") or {}
        metrics = dict(meta.get("metrics") or {})
        if meta.get("evaluated") and metrics:
            metrics.setdefault("iter", step)  # written before records carried their step
        best = meta.get("best")
        accuracy = meta.get("accuracy") or {}
        return cls(
            step=step,
            train_offset=int(position.get("train", step * train_per_step)) - step * train_per_step,
            train_per_step=train_per_step,
            val_position=int(position.get("val", 0)),
            set_positions={k.removeprefix("val/"): int(v) for k, v in position.items()
                           if k.startswith("val/")},
            val_history=[(int(s), float(v)) for s, v in meta.get("val_history", [])],
            first_val_loss=meta.get("first_val_loss"),
            first_sets=dict(meta.get("first_eval_sets") or {}),
            last_eval=metrics,
            best=None if best is None else (int(best[0]), float(best[1])),
            saves=list(meta.get("saves") or []),
            accuracy_position=int(accuracy.get("position", 0)),
            saturation={"history": [list(x) for x in accuracy.get("history", [])],
                        "first_step": accuracy.get("first_step")},
            gold=meta.get("gold"),
            last_saved=step,
            finished=bool(meta.get("finished")),
            summary=meta.get("summary"),
            config=dict(meta.get("config") or {}),
            model_config=dict(meta.get("model_config") or {}),
            tokenizer=meta.get("tokenizer"),
            data_identity=meta.get("data_identity"),
        )

