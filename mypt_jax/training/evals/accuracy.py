"""Masked-token accuracy at an eval: which batches it reads, and the record it adds.

Accuracy is the share of trained targets (nonzero loss weight) that the argmax of the logits
predicts, over eval_iters train batches and eval_iters val batches of the eval batch size.

Which batches (training/setup/semantics.py):
- ours (`token_accuracy`): streams of its own. The train batches come from a reader of the
  train split that only the accuracy advances, the val batches are the val loss's own
  window; no batch the run trains on or evaluates moves.
- dc62a0c: the run's streams, as the upstream's `fit()` draws them: the next eval_iters
  microbatches of the training stream (so training continues after them) and the eval_iters
  val batches after the val loss's. It draws them with or without a loss mask; without
  one, it scores nothing, as the upstream's accuracy is None then.
"""

from __future__ import annotations

from typing import Any

from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.evals import saturation
from mypt_jax.training.evals.val_loss import ValLoss
from mypt_jax.training.setup import semantics


def _acc(hit: int, scored: int) -> float | None:
    return hit / scored if scored else None


class AccuracyPass:
    """At an eval: `positions` draws the accuracy's windows (and, under dc62a0c, moves the
    streams on), `record` scores them. The val window is scored in the val loss's own pass
    (`ValLoss.evaluate`); the train window here."""

    def __init__(self, c, train_fn: ValLoss):
        self.c, self.train_fn = c, train_fn
        self.scores = semantics.accuracy_on(c)

    def positions(self, state: RunState, step: int, val_start: int) -> tuple[int, int]:
        """(train, val) window starts of the eval of `step`; advances the stream it reads."""
        c = self.c
        if semantics.newer(c):
            train = state.train_position_at(step)
            state.train_offset += semantics.train_draws_per_eval(c)
            return train, val_start + c.eval_iters
        train = state.accuracy_position
        state.accuracy_position += c.eval_iters
        return train, val_start

    def record(self, params, state: RunState, step: int, train_at: int,
               val_counts: tuple[int, int]) -> dict[str, Any]:
        """The eval record's accuracy and saturation fields (val: its (predicted, scored))."""
        (t_hit, t_n), (v_hit, v_n) = self.train_fn.accuracy(params, train_at), val_counts
        train, val = _acc(t_hit, t_n), _acc(v_hit, v_n)
        gap = None if train is None or val is None else train - val
        return {"train_masked_token_acc": train, "val_masked_token_acc": val,
                "train_masked_token_count": t_n, "val_masked_token_count": v_n,
                "masked_acc_gap": gap,
                **saturation.observe(self.c, state.saturation, step, train, val)}

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        """The console's accuracy part of an eval line ("" without one)."""
        train, val = record.get("train_masked_token_acc"), record.get("val_masked_token_acc")
        if train is None and val is None:
            return ""
        text = " | acc " + " / ".join("-" if x is None else f"{x:.4f}" for x in (train, val))
        if record.get("saturation_reason"):
            text += f" | SATURATION: {record['saturation_reason']}"
        return text
