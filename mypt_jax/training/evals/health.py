"""Red-line checks of the seed pipeline, run at every eval: report, never stop the run.

The seed document's stop signs: loss stuck near 10 or above, malformed or missing tags in
generations, the same output for every prompt, garbage on simple tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

STUCK_LOSS = 10.0  # ln(50304) = 10.8: a model at or above this has learned nothing
STUCK_EVALS = 3  # ...for this many consecutive evals
STUCK_MIN_DROP = 0.05  # ...dropping less than this over them
ALLOWED_TAGS = ("</myPT_assistant>", "<myPT_eot>")


def loss_stuck(val_losses: Sequence[tuple[int, float]]) -> str | None:
    recent = [v for _, v in val_losses[-STUCK_EVALS:]]
    if len(recent) < STUCK_EVALS or min(recent) < STUCK_LOSS:
        return None
    if recent[0] - recent[-1] >= STUCK_MIN_DROP:
        return None
    return f"val loss stuck at {recent[-1]:.3f} (>= {STUCK_LOSS}) over the last {STUCK_EVALS} evals"


def malformed_tags(results: Sequence[Mapping[str, Any]], tag_strings: Sequence[str]) -> str | None:
    """A completion must stop on the closing assistant tag (or eot) and contain no tag itself.

    `evaluate.evaluate` strips the stop tag from `completion` and says in `stopped_by`
    whether one was emitted; a completion that still ends with it is accepted too.
    """
    bad = []
    for r in results:
        text = r["completion"]
        closed = r.get("stopped_by", "stop_token") == "stop_token"
        for tag in ALLOWED_TAGS:
            if text.endswith(tag):
                text, closed = text[: -len(tag)], True
        stray = [t for t in tag_strings if t in text]
        if stray:
            bad.append(f"{r['name']}: contains {', '.join(stray)}")
        elif not closed:
            bad.append(f"{r['name']}: never closes (no {ALLOWED_TAGS[0]})")
    return "malformed tags: " + "; ".join(bad) if bad else None


def same_output(results: Sequence[Mapping[str, Any]]) -> str | None:
    completions = {r["completion"] for r in results}
    if len(results) >= 2 and len(completions) == 1:
        return f"every prompt gets the same output: {next(iter(completions))!r}"
    return None


def simple_tasks_failing(
    results: Sequence[Mapping[str, Any]], step: int, after_step: int
) -> str | None:
    scored = [r for r in results if r.get("expected") is not None]
    if step < after_step or not scored:
        return None
    if not any(r.get("exact") or r.get("normalized") for r in scored):
        return f"0/{len(scored)} simple prompts answered correctly at step {step}"
    return None


def check(
    val_losses: Sequence[tuple[int, float]],
    results: Sequence[Mapping[str, Any]],
    *,
    step: int,
    tag_strings: Sequence[str],
    simple_prompts_after: int,
) -> list[str]:
    """All red-line findings for this eval (empty when healthy)."""
    findings = [loss_stuck(val_losses)]
    if results:
        findings += [
            malformed_tags(results, tag_strings),
            same_output(results),
            simple_tasks_failing(results, step, simple_prompts_after),
        ]
    return [f for f in findings if f]


def forgetting(first: dict[str, float], now: dict[str, float], factor: float) -> str | None:
    """The red line: sets whose val loss rose more than `factor` times since the run began."""
    if factor <= 0:
        return None
    risen = [f"{name} {first[name]:.3f} -> {loss:.3f} (x{loss / first[name]:.2f})"
             for name, loss in now.items()
             if name in first and first[name] > 0 and loss > factor * first[name]]
    if not risen:
        return None
    return f"forgetting: val loss rose more than x{factor:g} on " + "; ".join(risen)
