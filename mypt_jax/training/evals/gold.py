"""GOLD checkpoint selection: at each eval, decide whether this checkpoint becomes the GOLD one.

The GOLD checkpoint is saved to `gold_dir(workdir)`. An eval is first checked by the loss
guards (`gold_loss_guards`): overfitting (val/train loss above `gold_overfit_ratio`), flapping
(the val loss rose `gold_consecutive_rises` evals in a row before this one) and an eval set's
loss more than `gold_eval_regression` above its first eval's. Then a strict gate
(`gold_gate_strict`) that failed to run blocks. Then the strategy picks:
- `val_loss`: the lowest val loss so far (and, with `gold_gate_require_pass`, a passing gate);
- `hybrid`: the lowest val loss among evals whose gate passed;
- `external_gate`: the best gate metric (`gold_gate_metric_goal`), ties broken by val loss;
  without a metric, the lowest val loss among passing evals.
An eval at which the gate does not run (see `gold_gate_interval_evals`) has no pass, so `hybrid`
and `require_pass` select only at evals where the gate runs, as upstream.

Differences from the upstream (MyPT core/model.py `fit`), on purpose:
- the final eval is decided like every other eval (guards and every strategy), and the gate
  runs there when `gold_gate_on_final` is set; the upstream never runs the gate at the final
  eval and promotes it for `val_loss` only, by val loss alone, without guards;
- the overfit guard is given the eval's real train loss; the upstream's eval computes no train
  loss, reads 0 and so never fires;
- an unknown strategy is refused (`gate.check`) instead of falling back to `val_loss`;
- `GoldState` round-trips through a checkpoint's record, so a resumed run keeps its history,
  baselines and best GOLD; the upstream starts them afresh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from mypt_jax.training.evals import gate as gate_lib

STATE_FILE = "gold_selection_state.json"  # the trainer rewrites it at every eval
TINY = 1e-6  # a train loss or baseline at or below this is too small to divide by


@dataclasses.dataclass
class GoldState:
    """What GOLD selection remembers between evals; the trainer counts `eval_count` (from 1)."""

    best_val_loss: float = math.inf  # lowest val loss seen, GOLD or not
    best_gold_val_loss: float = math.inf  # val loss of the GOLD checkpoint
    best_gate_metric: float | None = None  # gate metric of the GOLD checkpoint
    gold_step: int | None = None  # step of the GOLD checkpoint
    val_history: list[float] = dataclasses.field(default_factory=list)  # every eval's val loss
    baselines: dict[str, float] = dataclasses.field(default_factory=dict)  # first eval's sets
    eval_count: int = 0  # evals so far
    last_step: int | None = None  # step of the last decided eval

    def to_dict(self) -> dict:
        """JSON-able: infinities (nothing yet) are written as None."""
        return {
            "best_val_loss": _finite_or_none(self.best_val_loss),
            "best_gold_val_loss": _finite_or_none(self.best_gold_val_loss),
            "best_gate_metric": self.best_gate_metric,
            "gold_step": self.gold_step,
            "val_history": [_finite_or_none(v) for v in self.val_history],
            "baselines": dict(self.baselines),
            "eval_count": self.eval_count,
            "last_step": self.last_step,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GoldState:
        metric = d.get("best_gate_metric")
        return cls(
            best_val_loss=_none_to_inf(d.get("best_val_loss")),
            best_gold_val_loss=_none_to_inf(d.get("best_gold_val_loss")),
            best_gate_metric=None if metric is None else float(metric),
            gold_step=d.get("gold_step"),
            val_history=[_none_to_inf(v) for v in d.get("val_history", [])],
            baselines={k: float(v) for k, v in d.get("baselines", {}).items()},
            eval_count=int(d.get("eval_count", 0)),
            last_step=d.get("last_step"),
        )


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _none_to_inf(x: float | None) -> float:
    return math.inf if x is None else float(x)


def gold_dir(workdir: str) -> str:
    """Where the GOLD checkpoint lives: beside the run, `<workdir>_gold` (local or gs://)."""
    base = workdir.rstrip("/")
    _, sep, path = base.rpartition("://")
    # A bucket's root has no folder to sit beside: "gs://b_gold" would be another bucket.
    if not base or base.endswith(":") or (sep and "/" not in path):
        raise ValueError(f"workdir: {workdir!r} has no folder name to put '_gold' after")
    return base + "_gold"


# ----------------------------------------------------------------------------- loss guards


def rises_before_last(history: list[float]) -> int:
    """How many evals in a row the val loss rose, counting back from the one before the last."""
    rises = 0
    for i in range(len(history) - 2, 0, -1):
        if history[i] <= history[i - 1]:
            break
        rises += 1
    return rises


def _overfit(c, val_loss: float, train_loss: float) -> str | None:
    if train_loss <= TINY:
        return None
    ratio = val_loss / train_loss
    if ratio <= c.gold_overfit_ratio:
        return None
    return f"overfit (val/train={ratio:.1f}x, threshold={c.gold_overfit_ratio}x)"


def _flapping(c, history: list[float]) -> str | None:
    if len(history) < 3:
        return None
    rises = rises_before_last(history)
    if rises < c.gold_consecutive_rises:
        return None
    return f"flapping (val loss rose {rises} consecutive evals before this one)"


def _regression(c, baselines: Mapping[str, float], set_losses: Mapping[str, float]) -> str | None:
    for name, loss in set_losses.items():
        base = baselines.get(name)
        if base is None or base <= TINY:
            continue
        rise = (loss - base) / base
        if rise > c.gold_eval_regression:
            return (f"eval regression: {name} {base:.4f}->{loss:.4f} (+{rise * 100:.1f}%, "
                    f"threshold={c.gold_eval_regression * 100:.0f}%)")
    return None


def guard_reason(c, st: GoldState, val_loss: float, train_loss: float,
                 set_losses: Mapping[str, float]) -> str | None:
    """Why the loss guards block this eval, or None; `st` already holds this eval's val loss."""
    if not c.gold_loss_guards:
        return None
    return (_overfit(c, val_loss, train_loss) or _flapping(c, st.val_history)
            or _regression(c, st.baselines, set_losses))


# ----------------------------------------------------------------------------- strategies


def _strict_reason(c, gate: Mapping) -> str | None:
    if gate_lib.enabled(c) and c.gold_gate_strict and gate.get("ran") and not gate.get("ok"):
        return f"external gate execution failed (strict): rc={gate.get('returncode')}"
    return None


def metric_better(metric: float, best: float | None, goal: str) -> bool:
    if best is None:
        return True
    return metric < best if goal == "min" else metric > best


def strategy_choice(c, st: GoldState, val_loss: float, gate_pass: bool,
                    gate_metric: float | None) -> tuple[str | None, bool]:
    """(why the strategy blocks, or None; whether this eval beats the GOLD checkpoint)."""
    lower = val_loss < st.best_gold_val_loss
    if c.gold_selection == "val_loss":
        if gate_lib.enabled(c) and c.gold_gate_require_pass and not gate_pass:
            return "external gate required pass but gate did not pass", False
        return None, lower
    if c.gold_selection == "hybrid":
        return (None, lower) if gate_pass else ("hybrid strategy requires gate pass", False)
    if c.gold_gate_require_pass and not gate_pass:
        return "external_gate strategy requires gate pass", False
    if gate_metric is None:
        return None, gate_pass and lower
    if metric_better(gate_metric, st.best_gate_metric, c.gold_gate_metric_goal):
        return None, True
    return None, gate_metric == st.best_gate_metric and lower


# ----------------------------------------------------------------------------- an eval


def _record(c, st: GoldState, event: str, step: int, val_loss: float, gate_pass: bool,
            gate_metric: float | None, reason: str | None) -> dict:
    rec = {
        "event": event,
        "iter": step,
        "strategy": c.gold_selection,
        "val_loss": round(float(val_loss), 6),
        "best_gold_val_loss": (round(st.best_gold_val_loss, 6)
                               if math.isfinite(st.best_gold_val_loss) else None),
        "best_gate_metric": st.best_gate_metric,
        "gate_pass": gate_pass,
        "gate_metric": gate_metric,
        "selected": event == "gold_checkpoint",
    }
    if reason is not None:
        rec["reason"] = reason
    return rec


def decide(c, st: GoldState, *, step: int, val_loss: float, train_loss: float,
           set_losses: Mapping[str, float], gate: Mapping | None) -> dict:
    """Decide one eval, update `st`, and return the log record. The caller has counted the eval
    in `st.eval_count`, run the gate if `gate.due` (else `gate` is None) and, when the record
    says `selected`, saves this checkpoint to `gold_dir`."""
    if c.gold_selection not in gate_lib.STRATEGIES:
        raise ValueError(f"gold_selection: {c.gold_selection!r} selects nothing; decide() needs "
                         f"one of {gate_lib.STRATEGIES}")
    val_loss = float(val_loss)
    st.val_history.append(val_loss)
    st.last_step = step
    if not st.baselines and set_losses:
        st.baselines = {k: float(v) for k, v in set_losses.items()}
    st.best_val_loss = min(st.best_val_loss, val_loss)
    gate = gate or {"ran": False}
    gate_pass = bool(gate.get("gate_pass"))
    gate_metric = gate.get("metric_value")
    gate_metric = None if gate_metric is None else float(gate_metric)

    reason = guard_reason(c, st, val_loss, float(train_loss), set_losses) or _strict_reason(c, gate)
    better = False
    if reason is None:
        reason, better = strategy_choice(c, st, val_loss, gate_pass, gate_metric)
    if reason is not None:
        return _record(c, st, "gold_blocked", step, val_loss, gate_pass, gate_metric, reason)
    if not better:
        return _record(c, st, "gold_kept", step, val_loss, gate_pass, gate_metric, None)
    st.gold_step, st.best_gold_val_loss = step, val_loss
    if gate_metric is not None:
        st.best_gate_metric = gate_metric
    return _record(c, st, "gold_checkpoint", step, val_loss, gate_pass, gate_metric, None)


def state_file_payload(c, st: GoldState, last_gate: Mapping | None) -> dict:
    """What `STATE_FILE` holds after an eval: the selection so far and the last gate's result."""
    return {
        "strategy": c.gold_selection,
        "iter": st.last_step,
        "best_val_loss": _finite_or_none(st.best_val_loss),
        "best_gold_val_loss": _finite_or_none(st.best_gold_val_loss),
        "best_gate_metric": st.best_gate_metric,
        "gold_step": st.gold_step,
        "external_gate": {
            "enabled": gate_lib.enabled(c),
            "script": c.gold_gate_script,
            "metric_path": c.gold_gate_metric_path,
            "metric_goal": c.gold_gate_metric_goal,
            "pass_path": c.gold_gate_pass_path,
            "require_pass": c.gold_gate_require_pass,
            "strict": c.gold_gate_strict,
        },
        "last_gate": gate_lib.summary(last_gate),
    }
