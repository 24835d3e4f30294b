"""A run's programs, planned from its data and compiled around step 0 (the trainer's setup).

1. The train stream's exact batch shapes over the whole run and the evals' (val split and
   eval sets) are read from the episode index; `shape_plan.plan` merges rare shapes into
   covering ones where the cost model says the padding is cheaper than a compile.
2. Every planned program is lowered and compiled concurrently, through the persistent
   compilation cache (`program_set.Programs.compile_ahead`): the eval programs, the
   eval-prompt generation and the first update's program before step 0, then the other
   train programs in the order the run reaches them, before step 0 too or behind the steps
   (`compile_background`).
3. The loop and the evals then call the compiled programs by shape.

Cost model inputs: compile seconds and the step's FLOP rate measured by earlier runs of the
same model on the same devices (`compile_cache.Timings`), else a backend prior.

With several processes every one must compile the same programs, or they wait for each other
in a collective forever. Each reads its own timings file (its own cache folder), so process
0's cost model is broadcast before planning, and the plans' digest is then compared
(`agreement.check_values`): a plan that still differs stops every process before any compile.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import statistics
from typing import Any

import jax
import numpy as np

from mypt_jax.data import batching
from mypt_jax.training.compilation import compile_cache, shape_plan
from mypt_jax.training.compilation.fit_check import sharded_batch
from mypt_jax.training.compilation.program_set import Job, Programs
from mypt_jax.training.setup import agreement, semantics
from mypt_jax.training.step import train_step as ts


def timings_for(r, mesh, cache_dir: str) -> compile_cache.Timings:
    """The Timings entry of this model on these devices (what a compile's cost depends on)."""
    key = json.dumps({"model": r.model_config.to_dict(), "mesh": dict(mesh.shape),
                      "backend": jax.default_backend(),
                      "device": mesh.devices.flat[0].device_kind,
                      "remat": r.config.remat, "grad_accum": r.config.grad_accum_steps},
                     sort_keys=True)
    return compile_cache.Timings(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:16])


def cost_for(timings: compile_cache.Timings, devices: int,
             backend: str | None = None) -> shape_plan.Cost:
    """Measured numbers where an earlier run left them, else the prior of `backend` (default:
    this process's): its step rate per device times the accelerators."""
    backend = backend or jax.default_backend()
    prior = shape_plan.Cost.prior(backend)
    known = timings.get()
    # Simulated CPU devices share the host's cores: no more FLOP/s for more of them.
    scale = 1 if backend == "cpu" else devices
    return shape_plan.Cost(known.get("compile_s", prior.compile_s),
                           known.get("flops_per_s", prior.flops_per_s * scale))


def process0_cost(cost: shape_plan.Cost) -> shape_plan.Cost:
    """Process 0's cost model on every process (itself where there is one process). The two
    floats travel as their bits in int32 words: exact, whether or not jax has x64 on."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return cost
    bits = np.array([cost.compile_s, cost.flops_per_s], np.float64).view(np.int32)
    got = np.asarray(multihost_utils.broadcast_one_to_all(bits), np.int32).view(np.float64)
    return shape_plan.Cost(float(got[0]), float(got[1]))


def eval_count(c) -> int:
    """Evals of a whole run: steps 0, interval, ..., and the final one."""
    return len(semantics.eval_steps(c))


def train_positions(c) -> list[int]:
    """The train-stream draw of every update of a run from step 0."""
    at = semantics.train_positions(c, 0, 0, True)
    return [at(u) for u in range(c.max_iters)]


@dataclasses.dataclass
class RunPrograms:
    programs: Programs
    train: shape_plan.ShapePlan
    eval: shape_plan.ShapePlan | None
    cost: shape_plan.Cost
    train_sequence: list = dataclasses.field(default_factory=list)  # update -> its program

    def first_use(self, start: int = 0) -> dict[batching.BatchShape, int]:
        """Train program -> the first update from `start` on that calls it."""
        first: dict[batching.BatchShape, int] = {}
        for u, program in enumerate(self.train_sequence[start:], start):
            first.setdefault(program, u)
        return first

    def reached(self, start: int = 0) -> list[batching.BatchShape]:
        """The train programs in the order a run from update `start` first calls them (any
        that it never calls last)."""
        first = self.first_use(start)
        return sorted(self.train.programs, key=lambda p: first.get(p, len(self.train_sequence)))

    def summary(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(),
                "eval": None if self.eval is None else self.eval.to_dict(),
                "cost_model": dataclasses.asdict(self.cost)}

    def digest(self) -> str:
        """A hash of the planned programs and which batches run as which (the cost aside)."""
        plans = {"train": self.train.to_dict(),
                 "eval": None if self.eval is None else self.eval.to_dict()}
        return hashlib.sha256(json.dumps(plans).encode()).hexdigest()


def plan_run(r, mesh, layout: batching.Layout, train_source, eval_reads: list, *,
             timings: compile_cache.Timings, cost: shape_plan.Cost | None = None,
             print_fn=print) -> tuple[RunPrograms, batching.Layout]:
    """The train and eval plans (`eval_reads`: (eval reader, its window starts), as
    `Evaluator.planned_reads`; the readers are told their programs); returns the train
    layout with its planned programs. `cost` defaults to `cost_for(timings)`; with several
    processes, process 0's is used by all, and all must arrive at the same plans (raises
    agreement.HostsDisagree)."""
    c, mc = r.config, r.model_config
    cost = process0_cost(cost or cost_for(timings, mesh.size))

    def planned(kind: str, counts):
        return shape_plan.plan(
            counts, lambda s: shape_plan.step_flops(mc, s, kind) / cost.flops_per_s,
            cost.compile_s, kind=kind, max_extra=shape_plan.MAX_EXTRA_POSITIONS,
            exact=c.compile_plan == "exact")

    sequence = shape_plan.shape_sequence(train_source, layout, train_positions(c))
    train = planned("train", collections.Counter(sequence))
    eval_plan = None
    if eval_reads:
        counts: dict[batching.BatchShape, int] = {}
        for reader, positions in eval_reads:
            for s, n in reader.shape_counts(positions).items():
                counts[s] = counts.get(s, 0) + n
        eval_plan = planned("eval", counts)
    run = RunPrograms(Programs(print_fn), train, eval_plan, cost,
                      [train.assigned[s] for s in sequence])
    agreement.check_values({"the shape plan": run.digest()}, hint=(
        "each host plans from its own copy of the dataset's episode index: every host needs "
        "identical dataset files and the same mypt_jax version"))
    for reader, _ in eval_reads:
        reader.use_programs(eval_plan.programs)
    return run, dataclasses.replace(layout, programs=train.programs)


def generation_job(r, eval_prompts, generate) -> Job:
    """The eval-prompt generation as a job: compiled by running `generate` once on the
    starting weights (the step-0 eval then finds it in jax.jit's cache; the job's seconds
    include that one run, milliseconds on an accelerator). Its weight layout is the evals'
    (`evals/decode_layout.py`); running out of device memory there is one line naming the
    fields that change it."""
    from mypt_jax.decoding import eval_prompts as eval_lib
    from mypt_jax.parallel import device_memory as dm

    B, P, N = eval_lib.generation_shape(eval_prompts, r.tokenizer, r.config.block_size,
                                        r.config.eval_max_new_tokens)

    def warm():
        try:
            return generate()
        except Exception as e:
            if not dm.is_oom(e):
                raise
            raise MemoryError(
                f"eval_prompts_file/eval_max_new_tokens: the eval-prompt generation ({B} prompts, "
                f"{P}+{N} positions) does not fit in device memory beside the train state: "
                f"{str(e).splitlines()[0][:300]}; fewer or shorter eval prompts, a smaller "
                "eval_max_new_tokens or a larger mesh_fsdp fit") from e

    return Job("generate", f"{B}x{P}+{N}", None, warm=warm)


def background(c, accelerator: bool | None = None) -> bool:
    """Whether the later train programs compile behind the steps (`compile_background`),
    on an accelerator or not (default: this process's backend; the preflight's target)."""
    if c.compile_background == "auto":
        return jax.default_backend() != "cpu" if accelerator is None else accelerator
    return c.compile_background == "on"


def program_jobs(run: RunPrograms, r, mesh, tx, step_fn: ts.TrainStep, row_fn,
                 start: int = 0) -> tuple[list[Job], list[Job]]:
    """(eval jobs, train jobs in the order a run from update `start` reaches them)."""
    state = ts.abstract_state(tx, r.model_config, mesh)
    params = ts.abstract_params(r.model_config, mesh)
    hyper = step_fn.hyper
    evals = [] if run.eval is None else [
        Job("eval", s, lambda s=s: row_fn.lower(params, sharded_batch(s, mesh)))
        for s in run.eval.programs]
    train = [Job("train", s, lambda s=s: step_fn.jitted.lower(state, sharded_batch(s, mesh), hyper))
             for s in run.reached(start)]
    return evals, train


def compile_run(run: RunPrograms, r, mesh, tx, step_fn: ts.TrainStep, row_fn, *,
                threads: int = 0, generate: Job | None = None, start: int = 0,
                check=None) -> None:
    """Compiles the planned programs and `generate` (`generation_job`): what the eval and
    the update of step `start` need before it, the other train programs in the order the
    run reaches them, behind the steps where `background(c)`. `check(kind, shape,
    compiled)` raises for a program that does not fit (raises program_set.CompileError)."""
    progs = run.programs
    progs.register("train", lambda s, b, h: step_fn.jitted.lower(s, b, h))
    progs.register("eval", lambda p, b: row_fn.lower(p, b))
    evals, train = program_jobs(run, r, mesh, tx, step_fn, row_fn, start)
    jobs = ([generate] if generate else []) + evals + train
    progs.check = check
    progs.compile_ahead(jobs, threads, len(jobs) - len(train) + 1 if background(r.config) else None)


def remember(run: RunPrograms, timings: compile_cache.Timings, flops_per_s: float | None) -> None:
    """Keeps this run's measured compile seconds (misses only) and steady step FLOP rate."""
    misses = [x["seconds"] for x in run.programs.records if x["cache_hit"] is not True]
    values = {}
    if misses:
        values["compile_s"] = statistics.median(misses)
    if flops_per_s:
        values["flops_per_s"] = flops_per_s
    if values:
        timings.update(**values)
