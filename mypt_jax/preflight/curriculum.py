"""The preflight of a whole curriculum: what each phase waits for, and the total.

    python -m mypt_jax.preflight --config configs/phase3a1_alpha.py \\
        --config configs/phase3a1_beta.py --config configs/phase3a1_gamma.py \\
        --config configs/phase3a2.py --topology v5p-8 --root DIR

Per phase (one `--config` each, in order, datasets under `--root`), the run's own shape plan
(`training/compile_plan.plan_run`, as `mypt_jax.train` makes it on its first run) gives the
programs and how many batches each runs. Every distinct program is compiled once for the
target, here, and costed by its roofline:

- compile: the seconds of the programs this phase is the first to need (a later phase loads
  the rest from the persistent cache), serial and as the parallel compile's wall-clock
  (longest-first over `compile_threads`, a TPU VM host having cores to spare);
- train: each program's batches x its roofline step;
- evals: the eval plan's batches and the eval-prompt generation, at every eval;
- saves: `phase_estimate.save_time`'s blocking seconds.
"""

from __future__ import annotations

import heapq
from typing import Any

from mypt_jax.data import batching
from mypt_jax.data import inspect as data_inspect
from mypt_jax.data import loader as data
from mypt_jax.preflight import compiling as pre
from mypt_jax.preflight import phase_estimate
from mypt_jax.preflight import programs as tp
from mypt_jax.training.compilation import compile_cache, compile_plan
from mypt_jax.training.evals import val_loss as val_lib
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup import semantics


def makespan(seconds: list[float], threads: int) -> float:
    """Wall-clock of compiling jobs of these seconds on `threads` threads, longest first."""
    finish = [0.0] * max(threads, 1)
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(finish, finish[0] + s)
    return max(finish)


def _plans(r: cfg_lib.Resolved, mesh, target: pre.Target):
    c = r.config
    layout = batching.layout_from_config(
        c, data_shards=mesh.shape["data"] * mesh.shape["fsdp"], process_count=target.hosts)
    stream = dict(data_inspect.iterator_kwargs(c), tokenizer=r.tokenizer, row_stats=True,
                  process_index=0, process_count=target.hosts)
    train = data.make_source(c.dataset_dir, "train", **stream,
                             draw_rows=semantics.draw_rows(c))
    val = val_lib.ValLoss(
        data.make_source(c.dataset_dir, "val", **dict(stream, batch_size=semantics.eval_rows(c))),
        None, mesh, layout, c.eval_iters)
    platform = target.chip.platform.replace("cuda", "gpu") if target.chip else "cpu"
    no_measurements = compile_cache.Timings("", "")  # as the run's first time on the target
    cost = compile_plan.cost_for(no_measurements, len(target.devices), platform)
    planned, _ = compile_plan.plan_run(r, mesh, layout, train, [(val, semantics.val_positions(c))],
                                       timings=no_measurements, cost=cost)
    return planned


def run(configs: list, topology: str | None, *, compile_threads: int = 8,
        progress=None) -> dict[str, Any]:
    target = pre.target_for(topology)
    compiled: dict[str, dict] = {}  # program name -> compile_program's result
    phases = []
    for config in configs:
        r = pre.resolve_for(config, target)
        mesh = cfg_lib.mesh_for(r, target.devices)
        planned = _plans(r, mesh, target)
        c = r.config
        evals = compile_plan.eval_count(c)
        jobs = [(tp.train_program(r, mesh, s), n)
                for s, n in planned.train.batches_per_program().items()]
        jobs += [(tp.eval_program(r, mesh, s, 0), n / evals)
                 for s, n in planned.eval.batches_per_program().items()]
        decode = tp.decode_program(r, mesh, 0, target.capacity)
        jobs += [(decode, 1)] if decode else []
        new = []
        for program, _ in jobs:
            if program.name not in compiled:
                compiled[program.name] = pre.compile_program(program, target)
                new.append(compiled[program.name]["compile_s"])
                if progress:
                    progress(f"{program.name}: compiled in {new[-1]:.1f} s")

        def seconds(program, n):
            roof = compiled[program.name].get("roofline") or {}
            return n * (roof.get("step_s") or roof.get("step_s_bound") or 0.0)

        train_s = sum(seconds(p, n) for p, n in jobs if p.kind == "train")
        eval_s = evals * sum(seconds(p, n) for p, n in jobs if p.kind != "train")
        saves = phase_estimate.save_time(r, train_s + eval_s, target.hosts,
                                         target.chip is not None)
        save_s = saves["save_total_blocking_s"]
        compile_wall = makespan(new, compile_threads)
        phases.append({
            "config": c.dataset_dir, "max_iters": c.max_iters, "evals": evals,
            "plan": planned.summary(),
            "programs": [p.name for p, _ in jobs], "new_programs": len(new),
            "compile_serial_s": sum(new), "compile_wall_s": compile_wall,
            "train_s": train_s, "eval_s": eval_s, "save_s": save_s,
            "total_s": compile_wall + train_s + eval_s + save_s,
        })
    total = {k: sum(p[k] for p in phases) for k in
             ("compile_serial_s", "compile_wall_s", "train_s", "eval_s", "save_s", "total_s")}
    return {"target": target.name, "devices": len(target.devices),
            "compile_threads": compile_threads, "phases": phases, "total": total,
            "programs": list(compiled.values())}


def format_table(report: dict[str, Any]) -> str:
    cols = ("compile_serial_s", "compile_wall_s", "train_s", "eval_s", "save_s", "total_s")
    head = "| phase | programs (new) | compile serial | compile wall | train | evals | saves | total |"
    lines = [f"curriculum on {report['target']} ({report['devices']} devices, compile wall "
             f"over {report['compile_threads']} threads), seconds:", head,
             "|" + " --- |" * 8]
    for p in report["phases"]:
        lines.append(f"| {p['config']} | {len(p['programs'])} ({p['new_programs']}) | "
                     + " | ".join(f"{p[k]:.1f}" for k in cols) + " |")
    t = report["total"]
    lines.append("| **total** | | " + " | ".join(f"{t[k]:.1f}" for k in cols)
                 + f" |\n\nfour-phase wall-clock: {t['total_s'] / 60:.1f} min")
    return "\n".join(lines)
