"""The preflight of a whole curriculum: what each phase waits for, and the total.

    python -m mypt_jax.preflight --config configs/phase3a1_alpha.py \\
        --config configs/phase3a1_beta.py --config configs/phase3a1_gamma.py \\
        --config configs/phase3a2.py --topology v5p-8 --root DIR

The phases (one `--config` each, in order, datasets under `--root`) run as `pipeline --phase
all` runs them: one job, each phase handing its weights to the next on the devices. Each
row is the single-config preflight's phase (`run_model.phase_row`, one model of a run for
both forms) but for its compiles: a program an earlier phase compiled loads from the
persistent cache, and a later phase's new train and eval programs compile while the phase
before it runs (`training/next_phase.py`). A phase that hands off leaves its
final writes to the background: the end column is the last phase's. Every distinct program
is compiled once for the target, here.
"""

from __future__ import annotations

from typing import Any

from mypt_jax.preflight import compiling as pre
from mypt_jax.preflight import run_model
from mypt_jax.training.setup import config as cfg_lib

COLUMNS = ("compile_serial_s", "compile_wall_s", "train_s", "eval_s", "save_s", "end_s",
           "total_s")


def run(configs: list, topology: str | None, *, compile_threads: int = 8,
        progress=None) -> dict[str, Any]:
    target = pre.target_for(topology)
    compiled: dict[str, dict] = {}  # program name -> compile_program's result
    phases = []
    for i, config in enumerate(configs):
        r = pre.resolve_for(config, target)
        mesh = cfg_lib.mesh_for(r, target.devices)
        plan = run_model.plan_phase(r, mesh, target.hosts, pre.platform_of(target),
                                    target.capacity)
        new = set()
        for program in plan.programs:
            if program.name not in compiled:
                compiled[program.name] = pre.compile_program(program, target)
                new.add(program.name)
                if progress:
                    progress(f"{program.name}: compiled in "
                             f"{compiled[program.name]['compile_s']:.1f} s")
        ahead_s = phases[-1]["train_s"] + phases[-1]["eval_s"] if phases else 0.0
        phases.append(run_model.phase_row(
            plan, compiled, new, hosts=target.hosts, accelerator=target.chip is not None,
            compile_threads=compile_threads, hands_off=i < len(configs) - 1, ahead_s=ahead_s))
    total = {k: sum(p[k] for p in phases) for k in COLUMNS}
    total["total_s"] += total["end_s"]  # the last phase's final writes, which the job waits for
    return {"target": target.name, "devices": len(target.devices),
            "compile_threads": compile_threads, "phases": phases, "total": total,
            "programs": list(compiled.values())}


def format_table(report: dict[str, Any]) -> str:
    head = ("| phase | programs (new) | compile serial | compile wall | train | evals | saves "
            "| end | total |")
    lines = [f"curriculum on {report['target']} ({report['devices']} devices, compiles over "
             f"{report['compile_threads']} threads, the later train programs behind the steps), "
             "seconds:", head, "|" + " --- |" * 9]
    for p in report["phases"]:
        lines.append(f"| {p['config']} | {len(p['programs'])} ({p['new_programs']}) | "
                     + " | ".join(f"{p[k]:.1f}" for k in COLUMNS) + " |")
    t = report["total"]
    share = {k: t[k] / t["total_s"] if t["total_s"] else 0.0 for k in COLUMNS}
    lines.append("| **total** | | " + " | ".join(f"{t[k]:.1f}" for k in COLUMNS) + " |")
    lines.append(f"\nfour-phase wall-clock: {t['total_s'] / 60:.1f} min (each phase's total, "
                 f"then the last one's final writes); compile wall-clock "
                 f"{share['compile_wall_s']:.0%}, saves and the end {share['save_s'] + share['end_s']:.0%}")
    return "\n".join(lines)
