"""One model of a run's wall-clock: the single-config preflight's phase and each row of the
curriculum preflight both come from here.

A phase is what `mypt_jax.train` makes of its config on a first run:
- programs: the run's own shape plan (`compile_plan.plan_run`, read from the dataset's
  episode index): each train program with its batches over the run and the update that
  first calls it; each eval program with its batches over every eval (`planned_reads`: the
  val loss, the eval sets, the masked-token accuracy); the eval-prompt generation once per
  eval. Without the dataset (`padded`): every update at the largest batch shape the layout
  allows, `eval_batches` per eval at it, and every other length bucket compiled for its
  memory only.
- compile: in the order `compile_plan.compile_run` submits the programs, over
  `compile_threads` threads, each new program at the seconds its compile for the target
  took here. The run waits for the step-0 set (the generation, the eval programs, the
  first update's program); with background compiles (`compile_background`, on by default
  on accelerators) the other train programs compile behind the steps, and a program the
  run reaches before its compile ends waits the difference. A program that an earlier
  phase of the same job compiled loads from the persistent cache: no time.
- train: each train program's batches x its roofline step (`chips.roofline`).
- evals: each eval program's batches x its step, plus the generation at every eval.
- saves (`save_time`): the checkpoint policy's saves, the final one included: an
  asynchronous save blocks for its host copy (and for whatever of the previous write the
  steps between them did not cover), a synchronous one for its whole write.

That is the phase's total, the same in both forms but for the compiles an earlier phase of
the job did. Then the end (`end_s`, apart): the rest of the final save's write and the
exports (`model/`, the upstream copy). A run on its own, or the last phase of a curriculum,
waits for them before its process exits; a phase that hands off to the next (`pipeline
--phase all`, training/handoff.py) does not, they are written while the next phase trains.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from typing import Any

import numpy as np

from mypt_jax.model.param_table import param_shapes
from mypt_jax.preflight import programs as tp
from mypt_jax.training import startup
from mypt_jax.training.compilation import compile_cache, compile_plan
from mypt_jax.training.compilation.fit_check import bytes_per_device, train_shapes
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup import semantics
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts


@dataclasses.dataclass(frozen=True)
class Job:
    program: tp.Program
    batches: float  # over the whole run: updates, eval batches over every eval, generations
    first_update: int  # the update before which the run first calls it (0: the step-0 set)


@dataclasses.dataclass
class PhasePlan:
    r: cfg_lib.Resolved
    evals: int
    jobs: list[Job]  # in the order the run compiles them
    padded: bool  # no dataset: every update at the largest shape
    shape_plan: dict[str, Any] | None  # RunPrograms.summary() of the dataset's plan

    @property
    def programs(self) -> list[tp.Program]:
        return [j.program for j in self.jobs]


def eval_batches(c) -> int:
    """Batches one eval reads for its val loss and, where scored, its accuracy (eval_iters
    train and eval_iters val batches more; eval sets are not counted)."""
    return c.eval_iters * (3 if semantics.accuracy_on(c) else 1)


def _run_plan(r: cfg_lib.Resolved, mesh, hosts: int, platform: str) -> compile_plan.RunPrograms:
    """The shape plan the run makes from its dataset on its first run on the target."""
    no_measurements = compile_cache.Timings("", "")  # as the run's first time on the target
    return startup.plan_for(r, mesh, hosts, 0, timings=no_measurements,
                            cost=compile_plan.cost_for(no_measurements, mesh.size, platform))


def plan_phase(r: cfg_lib.Resolved, mesh, hosts: int, platform: str,
               capacity: int | None = None, largest_only: bool = False) -> PhasePlan:
    """The programs of a run of `r` on `mesh`, in compile order, with their batches."""
    c = r.config
    tx, _ = optim.optimizer_from_config(c)
    resident = bytes_per_device(ts.abstract_state(tx, r.model_config, mesh).opt_state)
    evals = compile_plan.eval_count(c)
    decode = tp.decode_program(r, mesh, resident, capacity)
    jobs = [Job(decode, evals, 0)] if decode else []
    if os.path.isdir(c.dataset_dir or ""):
        planned = _run_plan(r, mesh, hosts, platform)
        jobs += [Job(tp.eval_program(r, mesh, s, resident), n, 0)
                 for s, n in planned.eval.batches_per_program().items()]
        batches, first = planned.train.batches_per_program(), planned.first_use()
        order = planned.reached()
        if largest_only:
            order = [max(order, key=lambda s: s.rows * s.length)]
        jobs += [Job(tp.train_program(r, mesh, s), batches[s], first.get(s, c.max_iters))
                 for s in order]
        return PhasePlan(r, evals, jobs, False, planned.summary())
    shapes = train_shapes(c, mesh, hosts)  # largest first
    jobs.append(Job(tp.eval_program(r, mesh, shapes[0], resident), evals * eval_batches(c), 0))
    jobs += [Job(tp.train_program(r, mesh, s), c.max_iters if i == 0 else 0,
                 0 if i == 0 else c.max_iters)
             for i, s in enumerate(shapes[:1] if largest_only else shapes)]
    return PhasePlan(r, evals, jobs, True, None)


def compile_wall(seconds: list[float], reached: list[float | None],
                 threads: int) -> tuple[float, float]:
    """(seconds before step 0, seconds waited behind it) of compiling jobs of `seconds`,
    started in order on the first free of `threads` threads. The run waits before step 0
    for the jobs it `reached` at 0 seconds, then reaches each other one after that many
    seconds of its own work and waits for it if it is not ready (None: never called)."""
    free = [0.0] * max(threads, 1)
    ready = []
    for s in seconds:
        start = heapq.heappop(free)
        ready.append(start + s)
        heapq.heappush(free, start + s)
    blocking = max([t for t, at in zip(ready, reached, strict=True) if at == 0.0] + [0.0])
    waited = 0.0
    for at, t in sorted((at, t) for t, at in zip(ready, reached, strict=True) if at):
        waited += max(t - (blocking + waited + at), 0.0)
    return blocking, waited


def step_seconds(result: dict[str, Any] | None) -> float:
    roof = (result or {}).get("roofline") or {}
    return roof.get("step_s") or roof.get("step_s_bound") or 0.0


def run_seconds(plan: PhasePlan, results: dict[str, dict]) -> tuple[float, float]:
    """(train, eval) seconds of the phase's batches at their programs' roofline steps."""
    def total(kinds) -> float:
        return sum(j.batches * step_seconds(results.get(j.program.name))
                   for j in plan.jobs if j.program.kind in kinds)

    return total(("train",)), total(("eval", "decode"))


def compiled_ahead(plan: PhasePlan, seconds: list[float], ahead_s: float) -> float:
    """Zeroes in `seconds` the compiles of the phase's train and eval programs that finish
    within the `ahead_s` seconds before it starts, one after another in its compile order
    (`next_phase.NextPhase`, while the previous phase runs); returns how long the phase's
    start waits for the one still compiling then."""
    t, late = -ahead_s, 0.0
    for k, job in enumerate(plan.jobs):
        if job.program.kind == "decode" or not seconds[k] or t >= 0:
            continue
        t += seconds[k]
        seconds[k], late = 0.0, max(t, 0.0)
    return late


def phase_row(plan: PhasePlan, results: dict[str, dict], new: set[str], *, hosts: int,
              accelerator: bool, compile_threads: int, hands_off: bool = False,
              ahead_s: float = 0.0) -> dict[str, Any]:
    """The phase's predicted seconds from its programs' compile `results` (by name): those
    in `new` compile for this phase, the rest come from the cache. `ahead_s`: the previous
    phase's seconds, during which this one's compile ahead where they compile behind the
    steps (`compiled_ahead`)."""
    c = plan.r.config
    train_s, eval_s = run_seconds(plan, results)
    run_s = train_s + eval_s
    compile_s = [results[j.program.name]["compile_s"] if j.program.name in new else 0.0
                 for j in plan.jobs]
    serial_s = sum(compile_s)
    behind = compile_plan.background(c, accelerator)
    late = compiled_ahead(plan, compile_s, ahead_s) if behind and ahead_s else 0.0
    # A program is reached after its share of the run's steps and evals; one never called
    # (a length bucket compiled for its memory only) is not waited for.
    reached = [None if not j.batches else 0.0 if j.first_update == 0 or not behind
               else run_s * j.first_update / max(c.max_iters, 1) for j in plan.jobs]
    blocking, waited = compile_wall(compile_s, reached, compile_threads)
    blocking += late
    saves = save_time(plan.r, run_s, hosts, accelerator, hands_off=hands_off)
    row = {
        "config": c.dataset_dir, "max_iters": c.max_iters, "evals": plan.evals,
        "padded": plan.padded, "plan": plan.shape_plan,
        "programs": [p.name for p in plan.programs],
        "new_programs": sum(1 for p in plan.programs if p.name in new),
        "compile_serial_s": serial_s, "compile_wall_s": blocking + waited,
        "compile_before_step0_s": blocking, "compile_waits_s": waited,
        "train_s": train_s, "eval_s": eval_s, "save_s": saves["save_loop_s"],
        "end_s": saves["save_end_s"], "saves": saves,
    }
    row["total_s"] = row["compile_wall_s"] + run_s + row["save_s"]
    row["total_less_compile_s"] = row["total_s"] - row["compile_wall_s"]
    return row


def describe(row: dict[str, Any]) -> str:
    """The phase in one line: its parts, the saves, the total with and without compiling."""
    sv = row["saves"]
    kinds = ", ".join(f"{n} {k}" for k, n in sv["saves_by_trigger"].items() if n)
    what = "every update at the largest shape (no dataset)" if row["padded"] else "its shape plan"
    end = ("its final writes go on behind the next phase" if sv["hands_off"] else
           f"then {row['end_s']:.1f} s until the final save and the exports are written")
    return (f"phase: {row['max_iters']} steps over {what}: compile {row['compile_wall_s']:.1f} s "
            f"wall-clock ({row['compile_before_step0_s']:.1f} before step 0, "
            f"{row['compile_waits_s']:.1f} waited behind it; {row['compile_serial_s']:.1f} "
            f"serial), train {row['train_s']:.1f} s, {row['evals']} evals {row['eval_s']:.1f} s, "
            f"{sv['saves']} saves ({kinds}) of {sv['state_bytes'] / 2**30:.2f} GiB "
            f"{row['save_s']:.1f} s blocking ({'async' if sv['save_async'] else 'sync'}); "
            f"total {row['total_s']:.1f} s, {row['total_less_compile_s']:.1f} s without "
            f"compiling; {end}")


# Stated assumptions of the save estimate, per host: a device-to-host copy of its shard of the
# state (PCIe-class), then the write to disk or bucket (what a TPU VM's persistent disk or a
# GCS upload sustains). An asynchronous save blocks the loop for the copy only.
HOST_COPY_BYTES_PER_S = 10e9
HOST_WRITE_BYTES_PER_S = 1e9


def save_time(r: cfg_lib.Resolved, run_s: float, hosts: int = 1, accelerator: bool = True,
              *, hands_off: bool = False) -> dict[str, Any]:
    """The phase's saves under its checkpoint policy (training/checkpoint/policy.py): count
    per trigger, state bytes, seconds per save blocking and writing; what they block the
    run for, the final save included (`save_loop_s`), and what the end waits for after that
    (`save_end_s`: the rest of the final write and the exports; none where the phase
    `hands_off`, whose writes go on behind the next phase).

    `run_s` is the phase's training and eval time, which sets the time-triggered saves.
    Orbax starts a save only once the previous one is written, so an asynchronous save
    blocks for its copy plus whatever of the previous write the steps between them did not
    cover.
    """
    from mypt_jax.training.checkpoint.policy import SavePolicy

    c, mc = r.config, r.model_config
    n_params = sum(int(np.prod(s)) for s in _leaves(param_shapes(mc)))
    weights = n_params * np.dtype(mc.param_dtype).itemsize
    state_bytes = weights + n_params * 8  # plus AdamW's two float32 moments
    by_trigger = SavePolicy.from_config(c).saves_in(c.max_iters, c.eval_interval, run_s)
    saves = sum(by_trigger.values())
    copy_s = state_bytes / (hosts * HOST_COPY_BYTES_PER_S)
    write_s = copy_s + state_bytes / (hosts * HOST_WRITE_BYTES_PER_S)
    is_async = c.async_checkpointing == "on" or (c.async_checkpointing == "auto" and accelerator)
    blocking_s = copy_s if is_async else write_s
    if is_async:
        blocking_s += max(write_s - copy_s - run_s / max(saves, 1), 0.0)
    # model/ in the storage dtype, the upstream copy in bf16; process 0 writes them.
    export_bytes = weights + (n_params * 2 if c.export_upstream else 0)
    export_s = export_bytes / HOST_WRITE_BYTES_PER_S
    final_s = copy_s if is_async else write_s  # the final save's blocking part
    end_s = 0.0 if hands_off else write_s - final_s + export_s
    return {"saves": saves, "saves_by_trigger": by_trigger, "state_bytes": state_bytes,
            "save_write_s": write_s, "save_blocking_s": blocking_s, "save_async": is_async,
            "export_s": export_s, "hands_off": hands_off,
            "save_loop_s": (saves - 1) * blocking_s + final_s, "save_end_s": end_s}


def _leaves(tree) -> list[tuple[int, ...]]:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]
