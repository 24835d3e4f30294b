"""The external gate: a user's script, run at an eval, whose JSON verdict GOLD selection reads.

The gate is `<python> <script> *gold_gate_args`, run in `gold_gate_cwd`. `{model_name}` and
`{output_json}` in the args are filled in; without `{output_json}` the runner appends
`--output <json>`, as the upstream does. The script reports by writing that JSON: the value at
`gold_gate_pass_path` says whether the checkpoint passed (missing: the exit status decides) and
the value at `gold_gate_metric_path` is the metric `external_gate` selection compares.

Differences from the upstream runner (core/gold_selection.py), on purpose:
- the interpreter and working directory are settings (`gold_gate_python`, `gold_gate_cwd`)
  instead of the trainer's own interpreter and the repository root, and `check` refuses a
  missing script, interpreter or folder before step 0 rather than at the first eval;
- an empty `gold_gate_pass_path` means "the exit status decides" (the upstream would read the
  whole JSON object as the verdict), and a non-finite metric counts as no metric;
- the script runs in its own process group, so a timeout also ends the processes it started
  (which would otherwise keep its output pipes open and hang the run);
- a JSON left by an earlier attempt at the same step is removed before the script runs, so a
  script that fails to write one is never credited with the old verdict.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

STRATEGIES = ("val_loss", "hybrid", "external_gate")  # plus "" = GOLD selection off
NEEDS_GATE = ("hybrid", "external_gate")  # these never select without a gate's verdict
TAIL_CHARS = 2000  # how much of the script's stdout and stderr a result keeps


def deep_get(obj: Any, path: str, default: Any = None) -> Any:
    """The value at dotted `path` ("a.b.c") in nested dicts, or `default` if any key is missing."""
    node = obj
    for key in filter(None, (path or "").split(".")):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def enabled(c) -> bool:
    return bool(c.gold_selection) and bool(c.gold_gate_script)


def _cwd(c) -> str:
    return os.path.abspath(c.gold_gate_cwd or os.getcwd())


def _script(c) -> str:
    # Relative to the gate's cwd, then made absolute: the child runs there, we may not.
    return os.path.abspath(os.path.join(_cwd(c), os.path.expanduser(c.gold_gate_script)))


def _python(c) -> str | None:
    """The interpreter's absolute path; a bare name is looked up on PATH. None: not found."""
    name = c.gold_gate_python or sys.executable
    if os.sep not in name:
        return shutil.which(name)
    path = os.path.abspath(os.path.join(_cwd(c), os.path.expanduser(name)))
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


# ----------------------------------------------------------------------------- config check


def _check_strategy(c) -> None:
    if c.gold_selection not in ("", *STRATEGIES):
        raise ValueError(f"gold_selection: unknown strategy {c.gold_selection!r}; expected '' "
                         f"(off), {', '.join(map(repr, STRATEGIES))}")
    if c.gold_selection in NEEDS_GATE and not c.gold_gate_script:
        raise ValueError(f"gold_selection: {c.gold_selection!r} never selects a GOLD checkpoint "
                         "without a gate: set gold_gate_script, or use 'val_loss'")
    if c.gold_gate_script and not c.gold_selection:
        raise ValueError(f"gold_gate_script: {c.gold_gate_script!r} is set but gold_selection is "
                         "'' (off), so the gate would never run: set gold_selection")


def _check_values(c) -> None:
    if c.gold_gate_metric_goal not in ("max", "min"):
        raise ValueError(f"gold_gate_metric_goal: expected 'max' or 'min', "
                         f"got {c.gold_gate_metric_goal!r}")
    for field in ("gold_gate_timeout_s", "gold_gate_interval_evals"):
        if c[field] < 1:
            raise ValueError(f"{field}: must be >= 1, got {c[field]!r}")
    args = c.gold_gate_args
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"gold_gate_args: expected a tuple of strings, got {args!r}")


def _check_paths(c) -> None:
    cwd = _cwd(c)
    if not os.path.isdir(cwd):
        raise ValueError(f"gold_gate_cwd: {c.gold_gate_cwd!r} is not a directory")
    where = f"relative paths are looked up in gold_gate_cwd, here {cwd}"
    if not os.path.isfile(_script(c)):
        raise ValueError(f"gold_gate_script: {_script(c)} does not exist ({where})")
    if _python(c) is None:
        raise ValueError(f"gold_gate_python: {c.gold_gate_python or sys.executable!r} is not an "
                         f"executable file ({where}; a bare name is looked up on PATH)")


def check(c) -> None:
    """Refuse GOLD selection and gate settings that cannot work, naming the field; before step 0."""
    _check_strategy(c)
    _check_values(c)
    if enabled(c):
        _check_paths(c)


# ----------------------------------------------------------------------------- the command


def command(c, model_name: str, output_json: str) -> list[str]:
    """The gate's argv: interpreter, script, the args with their placeholders filled in."""
    args = [a.replace("{model_name}", model_name).replace("{output_json}", output_json)
            for a in c.gold_gate_args]
    if not any("{output_json}" in a for a in c.gold_gate_args):
        args += ["--output", output_json]
    return [_python(c) or c.gold_gate_python or sys.executable, _script(c), *args]


def output_path(out_dir: str, step: int, final: bool) -> str:
    """Where the gate writes its verdict for the eval at `step` (a local folder)."""
    name = "gold_gate_final.json" if final else f"gold_gate_step_{step}.json"
    return os.path.join(out_dir, name)


def describe(c, workdir: str) -> str:
    """One line for the run's start: the command with its placeholders, its cwd and interpreter."""
    if not enabled(c):
        return f"GOLD gate: off (gold_selection={c.gold_selection!r})"
    argv = shlex.join(command(c, "{model_name}", "{output_json}"))
    when = (f"every {c.gold_gate_interval_evals} eval(s)"
            + (" and at the final eval" if c.gold_gate_on_final else ", not at the final eval"))
    return (f"GOLD gate: {argv} | cwd {_cwd(c)} | python {_python(c)} | {when}, timeout "
            f"{c.gold_gate_timeout_s} s | {{output_json}} = "
            f"{os.path.join(workdir, 'gold_gate_step_<step>.json')} (final: gold_gate_final.json)")


def due(c, eval_count: int, final: bool) -> bool:
    """Whether the gate runs at this eval; `eval_count` counts evals from 1."""
    if not enabled(c):
        return False
    if final:
        return bool(c.gold_gate_on_final)
    return eval_count % max(1, c.gold_gate_interval_evals) == 0


# ----------------------------------------------------------------------------- running it


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return (text or "")[-TAIL_CHARS:]


def _read_verdict(path: str) -> tuple[dict, str | None]:
    """The gate's JSON, or {} and why not (a missing file is no error: the exit status decides)."""
    if not os.path.exists(path):
        return {}, None
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        return {}, f"output json {path} unreadable: {e}"
    if not isinstance(obj, dict):
        return {}, f"output json {path}: expected an object, got {type(obj).__name__}"
    return obj, None


def _metric(c, verdict: dict) -> float | None:
    if not c.gold_gate_metric_path:
        return None
    try:
        value = float(deep_get(verdict, c.gold_gate_metric_path))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _execute(c, argv: list[str]) -> tuple[int | None, str, str, str | None]:
    """Run argv: (returncode, stdout, stderr, error); never raises for the script's failures."""
    try:
        # Its own process group: a timeout (or our interruption) ends the children it started
        # too, which would otherwise hold the output pipes open and hang the run.
        proc = subprocess.Popen(argv, cwd=_cwd(c), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as e:
        return None, "", "", f"could not start {argv[0]}: {e}"
    try:
        stdout, stderr = proc.communicate(timeout=c.gold_gate_timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        return None, _tail(stdout), _tail(stderr), (
            f"timed out after {c.gold_gate_timeout_s} s (gold_gate_timeout_s)")
    except BaseException:
        _kill_group(proc)
        raise
    error = None if proc.returncode == 0 else f"exited with status {proc.returncode}"
    return proc.returncode, _tail(stdout), _tail(stderr), error


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


def run(c, model_name: str, output_json: str) -> dict:
    """Run the gate once and read its verdict. A failing or hanging script is a result with
    `ok` False and `error` set, never an exception; `output_json` must be a local path."""
    start = time.monotonic()
    if os.path.exists(output_json):
        os.remove(output_json)  # an earlier attempt's verdict at this step must not count
    argv = command(c, model_name, output_json)
    returncode, stdout, stderr, error = _execute(c, argv)
    verdict, json_error = _read_verdict(output_json)
    passed_by_status = returncode == 0
    gate_pass = (deep_get(verdict, c.gold_gate_pass_path, passed_by_status)
                 if c.gold_gate_pass_path else passed_by_status)
    return {
        "ran": True,
        "ok": returncode == 0,
        "returncode": returncode,
        "gate_pass": bool(gate_pass),
        "metric_value": _metric(c, verdict),
        "metric_path": c.gold_gate_metric_path,
        "output_json": output_json,
        "error": "; ".join(e for e in (error, json_error) if e) or None,
        "seconds": round(time.monotonic() - start, 3),
        "stdout_tail": stdout,
        "stderr_tail": stderr,
    }


SUMMARY_KEYS = ("ran", "ok", "returncode", "gate_pass", "metric_value", "metric_path",
                "output_json", "error")


def summary(result: Mapping | None) -> dict:
    """A result without its output tails, for the log line and the state file."""
    result = result or {"ran": False}
    return {k: result.get(k, False if k == "ran" else None) for k in SUMMARY_KEYS}
