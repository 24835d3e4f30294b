"""The schema of a run's `log.jsonl`: every line's kind, and each kind's fields.

A line is a train-step line (it has `train_loss`), an eval line (`val_loss`), or an event
(`event: <name>`). Every line has `iter`, the step it belongs to, and `time`, the Unix time
it was written (observe/metrics.py adds it). `check(record)` lists what
a line does against the schema; docs/log-schema.md is `markdown()`, kept equal by a test.

Types: `int`, `float` (an int is a float; a non-finite float is written as the string
"nan", "inf" or "-inf", JSON having none), `str`, `bool`, `list`, `dict`, `str|null`,
`bool|null`. A field name ending in `/*` is a family (`val_loss/<eval set>`).
"""

from __future__ import annotations

from typing import Any

from mypt_jax.training.checkpoint.policy import TRIGGERS

_TIMES = {"step_time": "float", "tokens_per_s": "float", "real_tokens_per_s": "float",
          "trained_tokens_per_s": "float", "computed_positions_per_s": "float"}

COMMON = {"time": "float"}  # on every line: the Unix time it was written
# The masked-token accuracy and saturation flags of an eval (evals/accuracy.py), where scored.
_ACCURACY = {"train_masked_token_acc": "float|null", "val_masked_token_acc": "float|null",
             "train_masked_token_count": "int", "val_masked_token_count": "int",
             "masked_acc_gap": "float|null", "saturation_detected": "bool",
             "saturation_reason": "str|null", "saturation_step": "int|null"}
_GOLD = ({"iter": "int", "strategy": "str", "val_loss": "float", "best_gold_val_loss": "float|null",
          "best_gate_metric": "float|null", "gate_pass": "bool", "gate_metric": "float|null",
          "selected": "bool"}, {"reason": "str", "gate": "dict"})
# kind -> (description, required fields, optional fields); each field -> type
SCHEMA: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "step": ("a log window's last train step (every `log_interval` steps)", {
        "iter": "int", "train_loss": "float", "lr": "float", "grad_norm": "float",
        "loss_tokens": "float", **_TIMES, "buckets": "list", "input_wait_s": "float"}, {}),
    "eval": ("an eval of the weights after `iter` updates (`final` at the end)", {
        "iter": "int", "val_loss": "float", "val_loss_token_weighted": "float",
        "eval_time": "float", "val_s": "float", "generate_s": "float", "eval_sets_s": "float"}, {
        "val_loss/*": "float", "gen": "dict", "gen_scores": "dict", "red_lines": "list",
        "final": "bool", **_ACCURACY}),
    "start": ("a train() call begins (a resume too)", {
        "iter": "int", "resumed": "bool", "notes": "list", "mesh": "dict", "devices": "int",
        "processes": "int"}, {}),
    "damaged_checkpoint": ("a damaged checkpoint was moved aside", {
        "iter": "int", "warning": "str"}, {}),
    "shape_plan": ("the batch shapes planned for the train or eval programs", {
        "iter": "int", "kind": "str", "exact_shapes": "int", "programs": "dict",
        "padded_up": "dict", "extra_positions": "float"}, {}),
    "compile": ("a program compiled: planned (before step 0, or behind the steps, logged at "
                "the end), or late with a warning", {
        "iter": "int", "ahead": "bool", "program": "str", "shape": "str", "seconds": "float",
        "cache_hit": "bool|null"}, {"warning": "str", "planned": "bool", "behind": "bool"}),
    "save": ("a committed checkpoint, with what triggered it", {
        "iter": "int", "step": "int", "trigger": "str", "triggers": "list",
        "blocking_s": "float", "total_s": "float", "overlapped_s": "float"}, {}),
    "profile": ("a profiler window closed: its steps and trace files", {
        "iter": "int", "steps": "list", "directory": "str", "xplane": "str|null",
        "perfetto_trace": "str|null"}, {}),
    "nan": ("a non-finite train loss, gradient norm or update stopped the run", {
        "iter": "int", "error": "str", "last_good_checkpoint": "str"}, {}),
    "preempted": ("SIGTERM/SIGINT: saved and stopped (exit 75)", {
        "iter": "int", "signal": "str", "checkpoint": "str"}, {}),
    "goodput": ("where the run's wall-clock went (training/observe/goodput.py)", {
        "iter": "int", "wall_s": "float", "seconds": "dict", "share": "dict"}, {}),
    "gold_checkpoint": ("an eval's weights became the GOLD copy (training/gold_run.py)", *_GOLD),
    "gold_blocked": ("a GOLD candidate blocked by a guard or the gate, with the reason", *_GOLD),
    "gold_kept": ("an eval no better than the GOLD copy, which stays", *_GOLD),
    "finished": ("the run ended at max_iters", {
        "iter": "int", "final_val_loss": "float", "wall_time_s": "float"}, {}),
}
EVENTS = tuple(k for k in SCHEMA if k not in ("step", "eval"))


def kind_of(record: dict[str, Any]) -> str | None:
    if "event" in record:
        return record["event"] if record["event"] in EVENTS else None
    if "train_loss" in record:
        return "step"
    if "val_loss" in record:
        return "eval"
    return None


def _type_ok(value: Any, kind: str) -> bool:
    if "|null" in kind and value is None:
        return True
    kind = kind.removesuffix("|null")
    if kind == "float":
        return (isinstance(value, int | float) and not isinstance(value, bool)) or value in (
            "nan", "inf", "-inf")
    types = {"int": int, "str": str, "bool": bool, "list": list, "dict": dict}[kind]
    return isinstance(value, types) and (kind == "bool" or not isinstance(value, bool))


def check(record: dict[str, Any]) -> list[str]:
    """What is wrong with one log line; [] when it matches the schema."""
    kind = kind_of(record)
    if kind is None:
        return [f"no known kind (event {record.get('event')!r}, keys {sorted(record)})"]
    _, required, optional = SCHEMA[kind]
    fields = {**COMMON, **required, **optional}
    problems = [f"{kind}: missing {k}" for k in {**COMMON, **required} if k not in record]
    for key, value in record.items():
        if key == "event":
            continue
        family = key.split("/")[0] + "/*" if "/" in key else None
        expected = fields.get(key) or fields.get(family or "")
        if expected is None:
            problems.append(f"{kind}: unknown field {key}")
        elif not _type_ok(value, expected):
            problems.append(f"{kind}: {key} is {value!r}, expected {expected}")
    if kind == "save" and record.get("trigger") not in TRIGGERS:
        problems.append(f"save: trigger {record.get('trigger')!r} is not one of {TRIGGERS}")
    return problems


def _shown(kind: str) -> str:
    return kind.replace("|null", " or null")  # a bar would split the table's cell


def markdown() -> str:
    """The schema as docs/log-schema.md shows it."""
    out = ["| line | when | fields (optional in brackets) |", "| --- | --- | --- |"]
    for kind, (what, required, optional) in SCHEMA.items():
        name = f"`event: {kind}`" if kind in EVENTS else kind
        fields = [f"`{k}` {_shown(t)}" for k, t in required.items()]
        fields += [f"[`{k}` {_shown(t)}]" for k, t in optional.items()]
        out.append(f"| {name} | {what} | {', '.join(fields)} |")
    return "\n".join(out) + "\n"
