"""The launch table: the preflight of one config on several topologies, as markdown and JSON.

    python benchmarks/preflight_table.py --config configs/phase3a1_gamma.py \\
        --runs v5p-8 v5p-8:attention_prob_dropout=False v5e-8:remat=full ... \\
        [--dataset DIR] [--out DIR] [--from_json]

Each run is `TOPOLOGY[:field=value,...]` and becomes one `python -m mypt_jax.preflight`
process (one at a time: a 750M compile holds several GB of host memory), its report saved as
`OUT/<run>.json` with its wall time and peak RSS. `--from_json` only formats the reports
already in OUT. Prints one JSON object, whose `markdown` is the table (also on stderr): one
row per run with the mesh, remat, attention, per-device memory of the largest train step,
fit, HBM traffic, predicted step time and MFU, slowest compile, and the predicted phase
wall-clock padded and padding-free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_name(run: str) -> str:
    return run.replace(":", "_").replace(",", "_").replace("=", "-")


def preflight(run: str, args, out: Path) -> dict:
    topology, _, fields = run.partition(":")
    cmd = [sys.executable, "-m", "mypt_jax.preflight", f"--config={args.config}",
           "--topology", topology, "--json", str(out)]
    if args.dataset:
        cmd.append(f"--config.dataset_dir={args.dataset}")
    cmd += [f"--config.{kv}" for kv in fields.split(",") if kv]
    if args.programs:
        cmd += ["--programs", args.programs]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        err.seek(0)
        stderr = err.read()
    code = os.waitstatus_to_exitcode(status)
    if not out.exists():
        raise SystemExit(f"{run}: the preflight wrote no report (exit {code}):\n" + stderr[-3000:])
    report = json.loads(out.read_text())
    report["table"] = {"run": run, "wall_s": time.perf_counter() - t0, "exit": code,
                       "max_rss_bytes": usage.ru_maxrss * 1024}
    out.write_text(json.dumps(report, indent=2))
    return report


def row(report: dict) -> dict:
    progs = report["programs"]
    train = next(p for p in progs if p["kind"] == "train")
    mesh = report["mesh"]
    roof = train.get("roofline") or {}
    phase = report.get("phase") or {}
    name = train["name"].split()[-1]  # the attention kernel
    suggestion = (report.get("suggestion") or {}).get("change")
    return {
        "run": report.get("table", {}).get("run", report["target"]["name"]),
        "topology": report["target"]["name"],
        "mesh": f"{mesh['data']}x{mesh['fsdp']}x{mesh['tensor']}",
        "remat": report["model"]["remat"], "attention": name,
        "need_gib": (train.get("memory") or {}).get("required", 0) / 2**30,
        "temp_gib": (train.get("memory") or {}).get("temporaries", 0) / 2**30,
        "hbm_gib": (report["target"]["capacity_per_device"] or 0) / 2**30,
        "fits": report["fits"], "suggestion": suggestion,
        "hbm_gb": (train.get("hbm_bytes") or 0) / 1e9,
        "step_ms": None if roof.get("step_s") is None else roof["step_s"] * 1e3,
        "mfu": roof.get("mfu"),
        "max_compile_s": max(p["compile_s"] for p in progs),
        "padded_min": phase.get("padded_train_s", 0) / 60 if phase else None,
        "padding_free_min": (phase.get("padding_free_train_s") or 0) / 60 if phase else None,
        "evals_min": phase.get("evals", 0) * phase.get("eval_s", 0) / 60 if phase else None,
    }


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(rows: list[dict], phase_steps: int | None) -> str:
    head = ("| run | mesh d x f x t | remat | attention | train step need / temp (GiB) | HBM (GiB) "
            "| fits | HBM traffic (GB/step) | step (ms) | MFU | slowest compile (s) "
            f"| {phase_steps or ''} steps padded / padding-free (min) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        fits = "yes" if r["fits"] else ("no: " + r["suggestion"] if r["suggestion"] else "no")
        lines.append(
            f"| {r['run']} | {r['mesh']} | {r['remat']} | {r['attention']} "
            f"| {r['need_gib']:.1f} / {r['temp_gib']:.1f} | {r['hbm_gib']:.1f} | {fits} "
            f"| {r['hbm_gb']:.0f} | {_f(r['step_ms'], '.1f')} | {_f(r['mfu'], '.0%')} "
            f"| {r['max_compile_s']:.0f} | {_f(r['padded_min'], '.1f')} / "
            f"{_f(r['padding_free_min'], '.1f')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/phase3a1_gamma.py")
    p.add_argument("--runs", nargs="+", required=True, help="TOPOLOGY[:field=value,...] ...")
    p.add_argument("--dataset", default="", help="the config's prepared dataset (shape mix)")
    p.add_argument("--out", default="preflight_reports")
    p.add_argument("--programs", default="", help="the preflight's --programs (default: all)")
    p.add_argument("--from_json", action="store_true", help="format the reports in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for run in args.runs:
        path = out / f"{run_name(run)}.json"
        if args.from_json:
            reports.append(json.loads(path.read_text()))
            reports[-1].setdefault("table", {})["run"] = run
        else:
            reports.append(preflight(run, args, path))
    rows = [row(r) for r in reports]
    steps = next((r["phase"]["max_iters"] for r in reports if r.get("phase")), None)
    table = markdown(rows, steps)
    print(table, file=sys.stderr)
    print(json.dumps({"config": args.config, "rows": rows, "markdown": table}, indent=2))


if __name__ == "__main__":
    main()
