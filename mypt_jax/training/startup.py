"""Everything `train()` builds before step 0, as one `Run`: the run state (fresh or resumed),
the log, the data streams, the evals, every planned program compiled, and the batch feed."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Any

import jax

from mypt_jax.data import batching, paths, prefetch
from mypt_jax.data import inspect as data_inspect
from mypt_jax.data import loader as data
from mypt_jax.parallel import sharding
from mypt_jax.training import exports
from mypt_jax.training.checkpoint import preemption
from mypt_jax.training.checkpoint.manager import Checkpointer, restore_params
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.compilation import compile_cache, compile_plan, fit_check
from mypt_jax.training.evals import gate
from mypt_jax.training.evals import val_loss as val_lib
from mypt_jax.training.evals.accuracy import AccuracyPass
from mypt_jax.training.evals.evaluator import Evaluator, load_eval_prompts, planned_reads
from mypt_jax.training.observe.metrics import MetricsWriter
from mypt_jax.training.observe.profiler import Profiler
from mypt_jax.training.observe.step_log import StepLog
from mypt_jax.training.saver import Saver
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup import eval_sets, identity, resume, semantics
from mypt_jax.training.setup.init_params import initial_params
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts


@dataclasses.dataclass
class Run:
    """One train() call's parts; the hooks and the loop read them."""

    r: cfg_lib.Resolved
    mesh: Any  # jax.sharding.Mesh of the run
    ckpt: Checkpointer
    writer: MetricsWriter
    begin: resume.Start  # where it started: the restored checkpoint, notes, damaged ones
    state: RunState  # host side: step, data positions, evals, saves
    train_state: Any  # device side: params and optimizer state (step.train_step.TrainState)
    mdef: Any  # the model's graph definition (nnx), merged with params to run it
    optimizer: optim.Optimizer  # the spec `tx` and `schedule` were built from
    tx: Any  # the optax optimizer
    schedule: Any  # step -> learning rate
    t_start: float  # perf_counter() when train() was called
    restore_s: float  # finding and reading the checkpoint resumed from
    cache_dir: str  # the persistent compilation cache ("" = off)
    start: int = 0  # the step this process starts from
    step_fn: Any = None  # step.train_step.TrainStep (its `hyper` on the devices)
    planned: compile_plan.RunPrograms | None = None  # the shape plans and compiled programs
    timings: Any = None  # compile_cache.Timings: the plan's cost model, remembered at the end
    feed: prefetch.Feed | None = None  # train batches, shaped and placed ahead
    train_position_of: Any = None  # update -> the train-stream draw its batch starts at
    evaluator: Evaluator | None = None
    gold: Any = None  # gold_run.GoldRun when gold_selection is set
    saver: Saver | None = None
    step_log: StepLog | None = None
    profiler: Profiler | None = None
    watcher: preemption.Watcher | None = None
    shapes_seen: set = dataclasses.field(default_factory=set)  # train batch shapes run
    late_compile_s: float = 0.0  # programs compiled during the run
    startup_s: float = 0.0  # before step 0, less restore and compile-ahead
    loop_s: float = 0.0  # the loop's wall-clock
    final_record: dict = dataclasses.field(default_factory=dict)  # the final eval's record
    exports: dict = dataclasses.field(default_factory=dict)  # summary key -> export written
    hand_off: bool = False  # the end's writes in the background (training/handoff.py)
    final_writes: Any = None  # () -> None: the exports, then the final save (hand-off)
    next_init: Any = None  # InitSource: the final weights for the next phase (hand-off)

    @property
    def c(self):
        return self.r.config


def begin(r: cfg_lib.Resolved, ckpt: Checkpointer, t_start: float) -> Run | dict[str, Any]:
    """Resumes, starts afresh, or (a finished run) returns its summary to report."""
    c = r.config
    _check_gold(c)
    cache_dir = compile_cache.use(c.compilation_cache_dir)  # before anything compiles
    mesh = cfg_lib.mesh_for(r)
    optimizer = optim.optimizer_spec(c)
    tx, schedule = optimizer.build()
    data_identity = identity.data_identity(c)
    t0 = time.perf_counter()
    start = resume.find_start(r, ckpt, data_identity,
                              lambda: ts.abstract_state(tx, r.model_config, mesh))
    restore_s = time.perf_counter() - t0
    if start.finished_summary is not None:
        return _report_finished(r, start, mesh)
    restored = start.restored
    if restored is not None:
        state = RunState.from_meta(restored.meta, semantics.draws_per_update(c))
        mdef, train_state = ts.model_def(r.model_config), restored.state
    else:
        state = RunState(train_per_step=semantics.draws_per_update(c))
        mdef, params = initial_params(r, mesh)
        train_state = ts.init_state(params, tx, r.model_config, mesh)
    # Every checkpoint records this run's config, model, tokenizer and data, as they are now.
    state.config, state.model_config = c.to_dict(), r.model_config.to_dict()
    state.tokenizer, state.data_identity = r.tokenizer.get_state(), data_identity
    state.finished, state.summary = False, None
    writer = MetricsWriter(
        c.log_file, paths.as_path(c.workdir) / "tb" if c.tensorboard else None,
        enabled=jax.process_index() == 0, total_steps=c.max_iters, start_step=state.step)
    return Run(r, mesh, ckpt, writer, start, state, train_state, mdef, optimizer, tx, schedule,
               t_start, restore_s, cache_dir, start=state.step)


def _check_gold(c) -> None:
    """The GOLD selection and its gate script, refused before step 0 (not at the first eval)."""
    try:
        gate.check(c)
    except ValueError as e:
        raise cfg_lib.ConfigError(str(e)) from None


def _report_finished(r: cfg_lib.Resolved, start: resume.Start, mesh) -> dict[str, Any]:
    """A finished run's summary; an export missing (a failure after the final save, or one
    deleted) is written again from the final checkpoint."""
    step, lost = start.restored.step, exports.missing(r)
    if jax.process_index() == 0:
        for w in start.warnings:
            print(f"warning: {w}", file=sys.stderr, flush=True)
        todo = f"writing the missing {', '.join(lost)}" if lost else "nothing to do"
        print(f"{r.config.workdir}: finished at step {step}; {todo}", flush=True)
    written = {}
    if lost:
        params, _ = restore_params(r.config.workdir, ts.abstract_params(r.model_config, mesh), step)
        written = exports.write(r, params, step, only=lost)
    return {**start.finished_summary, **written, "already_finished": True}


def announce(run: Run) -> None:
    """The run's first log lines: damaged checkpoints, resume, notes, the `start` event."""
    resumed = run.begin.restored is not None
    for w in run.begin.warnings:
        run.writer.print(f"warning: {w}")
        run.writer.write({"iter": run.start, "event": "damaged_checkpoint", "warning": w})
    if resumed:
        run.writer.print(f"resuming {run.c.workdir} from step {run.start}")
    notes = list(run.r.notes) + run.begin.notes
    for note in notes:
        run.writer.print(f"note: {note}")
    run.writer.write({"iter": run.start, "event": "start", "resumed": resumed, "notes": notes,
                      "mesh": dict(zip(sharding.MESH_AXES, run.r.mesh_shape, strict=True)),
                      "devices": jax.device_count(), "processes": jax.process_count()})


def eval_reader(c, mesh, layout: batching.Layout, stream: dict, eval_row_fn):
    """`reader(path, split, name="")`: a split's eval reader, `semantics.eval_rows` rows a
    batch, one episode a row."""
    stream = dict(stream, batch_size=semantics.eval_rows(c))

    def reader(path: str, split: str, name: str = "") -> val_lib.ValLoss:
        return val_lib.ValLoss(data.make_source(path, split, **stream), eval_row_fn, mesh,
                               layout.per_row, c.eval_iters, name=name)

    return reader


def build_evals(run: Run, layout: batching.Layout, stream: dict, eval_row_fn,
                on_nan) -> Evaluator:
    """The val loss and each eval set's, at their saved positions, the accuracy pass and the
    eval prompts. Eval batches hold `semantics.eval_rows` rows."""
    c, mesh = run.c, run.mesh
    reader = eval_reader(c, mesh, layout, stream, eval_row_fn)
    val_fn = reader(c.dataset_dir, "val")
    saved = run.state.set_positions
    sets = {name: reader(path, "val", name)  # checked on disk by resolve
            for name, path in eval_sets.parse(c.eval_sets).items()}
    run.state.set_positions = {name: int(saved.get(name, 0)) for name in sets}
    accuracy = None
    if semantics.accuracy_on(c) or semantics.train_draws_per_eval(c):
        accuracy = AccuracyPass(c, reader(c.dataset_dir, "train"))
    return Evaluator(run.r, run.mdef, mesh, run.writer, val_fn, sets,
                     load_eval_prompts(c.eval_prompts_file), run.schedule, on_nan, accuracy)


def build_programs(run: Run, stack: contextlib.ExitStack, on_nan) -> None:
    """Data streams, evals, the shape plan, every planned program compiled, the feed."""
    r, c, mesh, writer = run.r, run.c, run.mesh, run.writer
    layout = batching.layout_from_config(
        c, data_shards=mesh.shape["data"] * mesh.shape["fsdp"], process_count=jax.process_count())
    stream = dict(data_inspect.iterator_kwargs(c), tokenizer=r.tokenizer, row_stats=True)
    train_source = data.make_source(c.dataset_dir, "train", **stream,
                                    draw_rows=semantics.draw_rows(c))
    step_fn, row_fn = step_functions(r, mesh, run.mdef, run.tx, run.schedule, run.optimizer)

    def eval_row_fn(params, batch):  # the evals call the planned programs by batch shape
        return progs.call("eval", batching.shape_of(batch), params, batch)

    run.evaluator = evaluator = build_evals(run, layout, stream, eval_row_fn, on_nan)
    run.timings = compile_plan.timings_for(r, mesh, run.cache_dir)
    planned, train_layout = compile_plan.plan_run(
        r, mesh, layout, train_source, evaluator.planned_reads(),
        timings=run.timings, print_fn=writer.print)
    progs = planned.programs
    for p in (planned.train, planned.eval):
        writer.print(p.describe())
        writer.write({"iter": run.start, "event": "shape_plan", **p.to_dict()})
    generate = None if evaluator.eval_prompts is None else compile_plan.generation_job(
        r, evaluator.eval_prompts, lambda: evaluator.generations(run.train_state.params))
    stack.callback(progs.close)  # the compiles still going behind the steps, on any exit
    # The preflight's memory check, on the real device, as each compile ends.
    check = fit_check.program_check(mesh) if jax.default_backend() != "cpu" else None
    compile_plan.compile_run(planned, r, mesh, run.tx, step_fn, row_fn,
                             threads=c.compile_threads, generate=generate, start=run.start,
                             check=check)
    for record in progs.records:
        writer.write({"iter": run.start, "event": "compile", "ahead": True, **record})
    run.step_fn, run.planned = step_fn, planned
    state = run.state
    position_of = semantics.train_positions(
        c, run.start, state.train_position,
        eval_pending=state.eval_due(run.start, c.eval_interval))
    run.feed = prefetch.Feed(
        lambda u: prefetch.device_batch(train_source[position_of(u)], mesh, train_layout,
                                        r.tokenizer.eot_id),
        run.start, depth=c.prefetch_batches)
    run.train_position_of = position_of
    stack.callback(run.feed.close)


def step_functions(r, mesh, mdef, tx, schedule, optimizer) -> tuple[ts.TrainStep, Any]:
    """The run's jitted train step (its hyperparameters on the devices) and eval row loss."""
    c = r.config
    step_fn = ts.make_train_step(
        mdef, tx, schedule, mesh, seed=c.seed, grad_accum_steps=c.grad_accum_steps,
        loss_chunk_size=c.loss_chunk_size, optimizer=optimizer,
        microbatch_means=semantics.microbatch_means(c))
    step_fn.hyper = jax.device_put(step_fn.hyper, ts.replicated(mesh))
    row_fn = val_lib.make_row_loss_step(mdef, mesh, loss_chunk_size=c.loss_chunk_size,
                                        accuracy=semantics.accuracy_on(c))
    return step_fn, row_fn


def plan_for(r, mesh, process_count: int, process_index: int, *,
             timings: compile_cache.Timings, cost=None) -> compile_plan.RunPrograms:
    """The plan a run of `r` makes at its start, from its config and dataset alone (no
    weights): its train stream and its evals' reads as `build_evals` builds them. For the
    preflight and the next phase's compiles. With several processes it meets the others
    (the plans are compared), so call it where they all do."""
    c = r.config
    layout = batching.layout_from_config(
        c, data_shards=mesh.shape["data"] * mesh.shape["fsdp"], process_count=process_count)
    stream = dict(data_inspect.iterator_kwargs(c), tokenizer=r.tokenizer, row_stats=True,
                  process_index=process_index, process_count=process_count)
    train = data.make_source(c.dataset_dir, "train", **stream, draw_rows=semantics.draw_rows(c))
    reader = eval_reader(c, mesh, layout, stream, None)
    sets = {name: reader(path, "val") for name, path in eval_sets.parse(c.eval_sets).items()}
    accuracy = reader(c.dataset_dir, "train") if semantics.accuracy_on(c) else None
    reads = planned_reads(c, reader(c.dataset_dir, "val"), sets, accuracy)
    planned, _ = compile_plan.plan_run(r, mesh, layout, train, reads, timings=timings,
                                       cost=cost, print_fn=lambda m: None)
    return planned
