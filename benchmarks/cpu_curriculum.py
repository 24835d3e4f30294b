"""The whole CPU curriculum as a new user runs it, timed: `pipeline --phase all --preset cpu`.

    .venv/bin/python benchmarks/cpu_curriculum.py [--root DIR] [--warm_cache]

Generates, prepares, trains and tests all four phases in a fresh root (a temporary directory
unless `--root`), with a fresh XLA compilation cache (as on a fresh clone) unless
`--warm_cache`. Prints one JSON object: the wall-clock of the whole command, and per phase
the val and train loss at start and end, the test prompts with their answers, the steady step
time, MFU (model FLOPs of the shapes run over the matmul peak measured in the same process),
compile seconds, the phase's wall-clock and its red lines (failed prompts, forgetting);
`passes` says whether every alpha, beta and gamma prompt and at least 3 of the 4 3a-2 prompts
were answered exactly with no red line in any phase (the preset's target). Never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

NEEDED = {"3a1_alpha": "all", "3a1_beta": "all", "3a1_gamma": "all", "3a2": 3}


def phase_row(s: dict) -> dict:
    t, test = s["train"], s["test"]
    need = NEEDED[s["phase"]]
    return {
        "steps": t["steps"],
        "val_loss": [t["first_val_loss"], t["final_val_loss"]],
        "train_loss": [t["train_loss"]["first"], t["train_loss"]["last"]],
        "answers": {r["name"]: [r["completion"], r["expected"], r["exact"]] for r in test["results"]},
        "exact": f"{test['exact']}/{test['scored']}",
        "red_lines": s["red_lines"],
        "passes": test["exact"] >= (test["scored"] if need == "all" else need) and not s["red_lines"],
        "eval_sets": t["eval_sets"],
        "step_time_s": t["step_time_s"], "mfu": t["mfu"], "peak_flops_per_s": t.get("peak_flops_per_s"),
        "compile_s": t["compile_s"], "compile_wall_s": t["compile_wall_s"],
        "train_wall_s": t["wall_time_s"], "phase_wall_s": s["wall_time_s"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="default: a fresh temporary directory")
    p.add_argument("--warm_cache", action="store_true",
                   help="keep the user's XLA compilation cache (default: a fresh one)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp(prefix="mypt_cpu_curriculum_"))
    if not args.warm_cache:
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mypt_xdg_")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from mypt_jax.curriculum import pipeline

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the pipeline's progress; stdout is the JSON
        summaries = pipeline.run("all", root=root, preset="cpu")
    wall = time.perf_counter() - t0
    phases = {s["phase"]: phase_row(s) for s in summaries}
    report = {
        "benchmark": "cpu_curriculum", "command": " ".join(sys.argv),
        "machine": common.machine_info(), "root": str(root), "fresh_cache": not args.warm_cache,
        "wall_s": wall, "passes": all(r["passes"] for r in phases.values()), "phases": phases,
    }
    print(json.dumps(common.rounded(report), indent=2))


if __name__ == "__main__":
    main()
