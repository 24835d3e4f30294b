"""Training curves from run logs: `python -m mypt_jax.plot RUN [RUN ...] [--out FILE.png] [--chain]`.

A RUN is a training workdir (its log is the `log_file` its newest checkpoint records, else
`<RUN>/log.jsonl`) or a JSONL log itself. One run's figure goes next to its log as
`<log>.loss.png` unless `--out` says otherwise; `--chain` places each run after the previous
one on the step axis (the phases of a pipeline). The figure code is
`mypt_jax.training.observe.plot`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mypt_jax.training.checkpoint.run_meta import latest_run_state
from mypt_jax.training.observe import plot


def find_log(run: str | Path) -> Path:
    """A log file as given, or the log a run workdir names; the error lists where it looked."""
    run = Path(run)
    if run.is_file():
        return run
    tried = []
    if run.is_dir():
        state = latest_run_state(run)
        logged = state.config.get("log_file") if state is not None else None
        tried = [Path(logged)] if logged else []
    tried.append(run / "log.jsonl")
    for path in tried:
        if path.is_file():
            return path
    raise plot.PlotError(f"{run}: no training log found (looked for {', '.join(map(str, tried))})")


def _label(run: str) -> str:
    path = Path(run)
    return path.name.removesuffix(".jsonl") if path.suffix == ".jsonl" else path.resolve().name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mypt_jax.plot", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run workdir or JSONL log")
    p.add_argument("--out", default=None,
                   help=f"PNG to write (one run: <log>.loss.png; several: {plot.DEFAULT_MANY_OUT})")
    p.add_argument("--chain", action="store_true",
                   help="place each run after the previous one on the step axis")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs = [find_log(run) for run in args.runs]
        runs = [plot.curves(plot.read_log(log), _label(run))
                for log, run in zip(logs, args.runs, strict=True)]
    except (plot.PlotError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = [str(log) for log, run in zip(logs, runs, strict=True)
             if not (run.train_loss or run.val_loss)]
    if empty:
        print(f"error: no train or val loss in {', '.join(empty)}", file=sys.stderr)
        return 2
    default = plot.png_beside(logs[0]) if len(runs) == 1 else Path(plot.DEFAULT_MANY_OUT)
    print(plot.save(plot.figure(runs, chain=args.chain), args.out or default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
