"""Where a run's wall-clock went: the goodput table of its summary.

Rows, in seconds and as shares of the wall-clock from `train()` to the end of the exports:
- `steps`: the loop's time less everything below that happened inside it;
- `compile`: compile-ahead before step 0, and any program compiled during the run;
- `restore`: finding and reading the checkpoint a resume starts from;
- `startup`: the rest of the time before step 0 (resolving the config, the data streams, the
  first weights of a fresh run, the shape plan);
- `eval`: evals (val loss, generations, eval sets), the final one included;
- `save_blocking`: the loop blocked on saves (the final save's whole write included);
- `input_wait`: the loop waiting for the next batch;
- `profile`: opening and closing a profile window (the trace is written out);
- `export`: the model dir (and the upstream export) after the final save;
- `other`: the rest (the log's last lines, closing the run).
This is what the preflight's phase prediction is checked against.
"""

from __future__ import annotations

from typing import Any

ROWS = ("steps", "compile", "restore", "startup", "eval", "save_blocking", "input_wait", "profile",
        "export", "other")


def table(wall_s: float, loop_s: float, **seconds: float) -> dict[str, Any]:
    """`seconds` holds every row but `steps` and `other`; `loop_s` the loop's wall-clock and
    `in_loop` the part of the named rows spent inside it."""
    in_loop = seconds.pop("in_loop", 0.0)
    rows = {name: float(seconds.get(name, 0.0)) for name in ROWS if name not in ("steps", "other")}
    rows["steps"] = max(loop_s - in_loop, 0.0)
    rows["other"] = max(wall_s - sum(rows.values()), 0.0)
    ordered = {name: rows[name] for name in ROWS}
    return {"wall_s": wall_s, "seconds": ordered,
            "share": {k: (v / wall_s if wall_s > 0 else 0.0) for k, v in ordered.items()}}


def lines(goodput: dict[str, Any]) -> list[str]:
    """The table as console lines."""
    out = [f"where the time went ({goodput['wall_s']:.1f}s):"]
    for name, s in goodput["seconds"].items():
        out.append(f"  {name:<14}{s:9.2f}s {100 * goodput['share'][name]:6.1f}%")
    return out
