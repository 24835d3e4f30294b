"""The upstream's token-accuracy saturation flags (dc62a0c `token_accuracy_saturation`).

At each eval with both accuracies, (step, train acc, val acc) joins the history. From step
`saturation_min_steps` on, with at least `saturation_window` (w) entries, the last w give
    train_gain = (train[-1] - train[0]) / (w - 1), val_gain likewise,
    gap_growth = gap[-1] - gap[0]   (gap = train acc - val acc)
and three flags, each a reason:
- plateau: both gains below `saturation_min_delta`;
- memorization shift: val_gain below it, train_gain above it, and the gap grew;
- gap widening: gap_growth above `saturation_gap_threshold`.
The first step with a reason is kept; every later eval reports the saturation as detected.
Here the history is part of the checkpoint and survives a resume; the upstream's starts
empty again on every resume. The only action is the upstream's "log_and_flag".
"""

from __future__ import annotations

from typing import Any


def reasons(c, history: list[list[float]]) -> list[str]:
    """The flags raised by the newest window of `history` ([step, train, val] entries)."""
    w = max(2, int(c.saturation_window))
    if len(history) < w or history[-1][0] < c.saturation_min_steps:
        return []
    recent = history[-w:]
    train_gain = (recent[-1][1] - recent[0][1]) / (w - 1)
    val_gain = (recent[-1][2] - recent[0][2]) / (w - 1)
    gap_growth = (recent[-1][1] - recent[-1][2]) - (recent[0][1] - recent[0][2])
    delta, threshold = c.saturation_min_delta, c.saturation_gap_threshold
    out = []
    if train_gain < delta and val_gain < delta:
        out.append(f"plateau train_gain={train_gain:.4f}, val_gain={val_gain:.4f}, "
                   f"min_delta={delta:.4f}")
    if val_gain < delta and train_gain > delta and gap_growth > 0.0:
        out.append(f"memorization_shift train_gain={train_gain:.4f}, val_gain={val_gain:.4f}, "
                   f"gap_growth={gap_growth:.4f}")
    if gap_growth > threshold:
        out.append(f"gap_widening gap_growth={gap_growth:.4f}, threshold={threshold:.4f}")
    return out


def observe(c, state: dict[str, Any], step: int, train_acc: float | None,
            val_acc: float | None) -> dict[str, Any]:
    """Adds an eval to `state` ({"history", "first_step"}, kept in the checkpoint) and
    returns the record's saturation fields."""
    found: list[str] = []
    if c.saturation_check and train_acc is not None and val_acc is not None:
        state["history"].append([step, train_acc, val_acc])
        found = reasons(c, state["history"])
        if found and state.get("first_step") is None:
            state["first_step"] = step
    return {"saturation_detected": bool(found) or state.get("first_step") is not None,
            "saturation_reason": "; ".join(found) or None,
            "saturation_step": state.get("first_step")}
