"""The training loop: `train(config, workdir) -> summary`.

Order of one iteration, as upstream: at `step % eval_interval == 0` (step 0 included) the
val loss and eval-prompt generations are computed *before* that step's update, then the
checkpoint is saved, then one optimizer step runs. A checkpoint at step s holds the weights
after s updates, the train iterator positioned at global batch s and the val iterator
after that eval, so rerunning the same command continues exactly where it stopped.

Deliberate differences from the upstream loop: the train loss, learning rate, gradient
norm, throughput and step time are logged; a final eval at `max_iters` is logged with
`"final": true` and recorded in the last checkpoint; the final checkpoint is step
`max_iters` (upstream wrote `max_iters - 1`); resuming restores the data position and does
not repeat any update; a finished run rerun does nothing but report.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from mypt_jax.data import batching, paths
from mypt_jax.data import inspect as data_inspect
from mypt_jax.data import loader as data
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import param_shardings
from mypt_jax.parallel import sharding
from mypt_jax.training import checkpoint as ckpt_lib
from mypt_jax.training import (
    compile_cache,
    compile_plan,
    eval_sets,
    evaluation,
    exports,
    fit_check,
    health,
    identity,
    optim,
    preemption,
    prefetch,
    resume,
)
from mypt_jax.training import config as cfg_lib
from mypt_jax.training import step as ts
from mypt_jax.training.init_source import InitSource
from mypt_jax.training.metrics import MetricsWriter
from mypt_jax.training.shape_plan import step_flops
from mypt_jax.training.step_stats import StepWindow

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- init weights


def adapt_params(params: dict, source: ModelConfig, target: ModelConfig) -> dict:
    """Init-checkpoint params -> this run's layout: tie (average, as upstream), cut wpe, cast."""
    params = dict(params)
    if target.tie_weights and not source.tie_weights:
        params["wte"] = (params["wte"].astype(jnp.float32)
                         + params.pop("lm_head_kernel").astype(jnp.float32)) / 2
    if "wpe" in params and params["wpe"].shape[0] > target.block_size:
        params["wpe"] = params["wpe"][: target.block_size]
    return jax.tree.map(lambda x: jnp.asarray(x).astype(target.param_dtype), params)


def _init_source_params(init: InitSource, mesh) -> dict:
    if init.kind == "run":
        abstract = ts.abstract_params(init.model_config, mesh)
        params, _ = ckpt_lib.restore_params(init.path, abstract)
        return params
    if init.kind == "upstream":
        from mypt_jax.interop import upstream

        return upstream.read_upstream(init.path).params
    from mypt_jax.interop import model_io  # our model dir (config.json + tokenizer.json + params/)

    return model_io.load_params(init.path, init.model_config, mesh=mesh)


def initial_params(r: cfg_lib.Resolved, mesh) -> tuple[ts.ModelDef, dict]:
    mc = r.model_config
    if r.init is None:
        return ts.init_model(mc, mesh, r.config.seed)
    source = _init_source_params(r.init, mesh)
    params = jax.jit(
        lambda p: adapt_params(p, r.init.model_config, mc),
        out_shardings=param_shardings(mc, mesh),
    )(source)
    return ts.model_def(mc), params


# ----------------------------------------------------------------------------- evaluation


def _load_eval_prompts(path: str):
    if not path:
        return None
    from mypt_jax.decoding import eval_prompts

    return eval_prompts.load_eval_prompts(path)


def _generate(model, tokenizer, eval_prompts, max_new_tokens: int) -> list[dict]:
    if eval_prompts is None:
        return []
    from mypt_jax.decoding import eval_prompts as eval_lib

    return list(eval_lib.evaluate(model, tokenizer, eval_prompts, max_new_tokens=max_new_tokens))


# ----------------------------------------------------------------------------- the loop


class _Run:
    """Mutable bookkeeping of one train() call."""

    def __init__(self, r: cfg_lib.Resolved, writer: MetricsWriter, ckpt: ckpt_lib.Checkpointer,
                 schedule, data_identity: dict, mesh):
        self.r, self.c, self.writer, self.ckpt, self.mesh = r, r.config, writer, ckpt, mesh
        self.schedule, self.data_identity = schedule, data_identity
        self.val_history: list[tuple[int, float]] = []
        self.last_saved: int | None = None
        self.last_eval: dict[str, Any] = {}
        self.first_val_loss: float | None = None
        self.pending: list[tuple[int, Any, batching.BatchInfo]] = []  # dispatched, not fetched
        self.window = StepWindow()
        self.feed: prefetch.Feed | None = None
        self.val_position = 0
        self.sets: dict[str, evaluation.ValLoss] = {}  # eval_sets: name -> its val loss
        self.set_positions: dict[str, int] = {}
        self.first_sets: dict[str, float] = {}  # each set's loss at the run's first eval
        self.rates: list[float] = []  # model FLOP/s of each log window (the plan's next cost)
        self.step_times: list[float] = []  # seconds per step of each log window

    def nan_stop(self, what: str, value: float, step: int) -> None:
        self.ckpt.wait()
        where = (
            f"step {self.last_saved} at {self.ckpt.path(self.last_saved)}"
            if self.last_saved is not None else "none"
        )
        self.writer.write({"iter": step, "error": f"{what} is {value}", "last_good_checkpoint": where})
        raise FloatingPointError(f"{what} is {value} at step {step}; last good checkpoint: {where}")

    def flush(self, force: bool = False) -> None:
        """Fetches the dispatched steps' metrics at the end of a log window, or when `force`d
        (before an eval, a save or the end: a NaN must stop the run before it reaches a
        checkpoint). In between the loop never waits for the devices."""
        if not self.pending:
            return
        done = self.pending[-1][0] + 1
        if not force and done % self.c.log_interval and done != self.c.max_iters:
            return
        pending, self.pending = self.pending, []
        for (step, _, info), metrics in zip(pending, jax.device_get([m for _, m, _ in pending]),
                                            strict=True):
            m = {k: float(v) for k, v in metrics.items()}
            if not math.isfinite(m["train_loss"]):
                self.nan_stop("train loss", m["train_loss"], step)
            self.window.add(info)
            if (step + 1) % self.c.log_interval == 0 or step + 1 == self.c.max_iters:
                self.log_step(step, m)

    def log_step(self, step: int, m: dict[str, float]) -> None:
        shapes = [i.shape for i in self.window.infos]
        window = self.window.close()
        if window["step_time"] > 0 and shapes:
            flops = sum(step_flops(self.r.model_config, s) for s in shapes)
            self.rates.append(flops / (window["step_time"] * len(shapes)))
            self.step_times.append(window["step_time"])
        record = {
            "iter": step, "train_loss": m["train_loss"], "lr": m["lr"],
            "grad_norm": m["grad_norm"], "loss_tokens": m["loss_tokens"], **window,
            "input_wait_s": self.feed.take_wait_s() if self.feed else 0.0,
        }
        self.writer.write(record)
        self.writer.scalars(step, {k: v for k, v in record.items() if k not in ("iter", "buckets")})
        self.writer.progress(step + 1, {"loss": f"{m['train_loss']:.4f}", "lr": f"{m['lr']:.2e}"})
        if not self.writer.interactive:
            self.writer.print(
                f"step {step}: train {m['train_loss']:.4f} | lr {m['lr']:.2e} | grad norm "
                f"{m['grad_norm']:.3f} | {record['tokens_per_s']:.0f} tok/s padded, "
                f"{record['real_tokens_per_s']:.0f} real, {record['trained_tokens_per_s']:.0f} "
                f"trained | {record['buckets'][-1]}"
            )

    def log_saves(self) -> None:
        """One `event: save` line per committed save: how long the loop was blocked, and how
        much of the write overlapped the steps."""
        self.ckpt.poll()
        for timing in self.ckpt.timings:
            self.writer.write({"iter": timing["step"], "event": "save", **timing})
        self.ckpt.timings.clear()

    def evaluate(self, step: int, state, val_fn, mdef, eval_prompts, final=False):
        c = self.c
        t0 = time.perf_counter()
        v, v_tok = val_fn(state.params, self.val_position)
        self.val_position += c.eval_iters
        if not math.isfinite(v):
            self.nan_stop("val loss", v, step)
        t1 = time.perf_counter()
        results = [] if eval_prompts is None else _generate(
            mdef.merge(evaluation.decode_layout(state.params, self.mesh)), self.r.tokenizer,
            eval_prompts, c.eval_max_new_tokens)
        t2 = time.perf_counter()
        set_losses = {}
        for name, set_fn in self.sets.items():
            set_losses[name] = set_fn(state.params, self.set_positions[name])[0]
            self.set_positions[name] += c.eval_iters
        self.val_history.append((step, v))
        if self.first_val_loss is None:
            self.first_val_loss = v
            self.first_sets = dict(set_losses)
        findings = health.check(
            self.val_history, results, step=step,
            tag_strings=list(self.r.tokenizer.id_by_string), simple_prompts_after=c.simple_prompts_after,
        ) + [f for f in [eval_sets.forgetting(self.first_sets, set_losses, c.forgetting_factor)] if f]
        record: dict[str, Any] = {"iter": step, "val_loss": v, "val_loss_token_weighted": v_tok,
                                  **{f"val_loss/{n}": x for n, x in set_losses.items()}}
        if results:
            record["gen"] = {g["name"]: g["completion"] for g in results}
            record["gen_scores"] = {
                g["name"]: {"exact": g.get("exact"), "normalized": g.get("normalized")}
                for g in results
            }
        if findings:
            record["red_lines"] = findings
        if final:
            record["final"] = True
        now = time.perf_counter()
        record.update(eval_time=now - t0, val_s=t1 - t0, generate_s=t2 - t1, eval_sets_s=now - t2)
        self.writer.write(record)
        self.writer.scalars(step, {"val_loss": v, "val_loss_token_weighted": v_tok,
                                   **{f"val_loss/{n}": x for n, x in set_losses.items()}})
        if results:
            self.writer.text(step, "gen", "\n\n".join(
                f"**{g['name']}**: `{g['completion']}`" for g in results))
        lr = float(jax.device_get(self.schedule(min(step, c.max_iters - 1))))
        sets_text = "".join(f" | {n} {x:.4f}" for n, x in set_losses.items())
        self.writer.print(f"step {step}: val {v:.4f} (token-weighted {v_tok:.4f}){sets_text} | "
                          f"lr {lr:.2e}")
        for g in results:
            mark = "ok" if g.get("exact") or g.get("normalized") else "--"
            self.writer.print(f"  [{mark}] {g['name']}: {g['completion']!r}")
        for f in findings:
            self.writer.print(f"  RED LINE: {f}")
        self.last_eval = record
        return record

    def save(self, step: int, state, evaluated: bool, finished=False, summary=None):
        meta = {
            "step": step,
            "config": self.c.to_dict(),
            "model_config": self.r.model_config.to_dict(),
            "tokenizer": self.r.tokenizer.get_state(),
            "evaluated": evaluated,
            "metrics": {k: v for k, v in self.last_eval.items() if k != "gen"} if evaluated else {},
            "val_history": self.val_history,
            "first_val_loss": self.first_val_loss,
            "first_eval_sets": self.first_sets,
            "finished": finished,
            "summary": summary,
            "data_identity": self.data_identity,
        }
        self.ckpt.save(
            step, state, data_position={"train": self.feed.position, "val": self.val_position,
                                        **{f"val/{n}": p for n, p in self.set_positions.items()}},
            meta=meta, val_loss=self.last_eval.get("val_loss") if evaluated else None,
        )
        self.last_saved = step

    def preempted(self, step: int, state, signal_name: str) -> None:
        """Saves at `step` (the weights after `step` updates), waits for the commit, raises."""
        self.flush(force=True)  # a NaN must not be saved as the resume point
        if step != self.last_saved:
            self.save(step, state, evaluated=False)
        self.ckpt.wait()
        where = str(self.ckpt.path(step))
        self.writer.write({"iter": step, "event": "preempted", "signal": signal_name,
                           "checkpoint": where})
        raise preemption.Preempted(step, signal_name, where)


def _warn_late(progs, writer: MetricsWriter, step: int) -> None:
    """A program compiled during the run (a shape the plan did not foresee) is a warning."""
    for record in progs.late:
        warning = (f"{record['program']} program for {record['shape']} compiled during the run "
                   f"({record['seconds']:.1f}s): a shape outside the plan")
        log.warning("step %d: %s", step, warning)
        writer.print(f"warning: step {step}: {warning}")
        writer.write({"iter": step, "event": "compile", "ahead": False, "warning": warning,
                      **record})
    progs.late.clear()


def train(config: config_dict.ConfigDict, workdir: str | None = None) -> dict[str, Any]:
    """Trains (or resumes, or reports a finished run) and returns a summary dict."""
    t_start = time.perf_counter()
    r = cfg_lib.resolve(config, workdir)
    with contextlib.ExitStack() as stack:
        ckpt = ckpt_lib.Checkpointer(
            r.config.workdir, keep=r.config.keep_checkpoints, keep_best=r.config.keep_best,
            async_save={"auto": None, "on": True, "off": False}[r.config.async_checkpointing])
        stack.callback(ckpt.close)
        return _train(r, ckpt, stack, t_start)


def _train(r: cfg_lib.Resolved, ckpt: ckpt_lib.Checkpointer, stack: contextlib.ExitStack,
           t_start: float) -> dict[str, Any]:
    c = r.config
    is_main = jax.process_index() == 0
    cache_dir = compile_cache.use(c.compilation_cache_dir)  # before anything compiles
    mesh = cfg_lib.mesh_for(r)
    optimizer = optim.optimizer_spec(c)
    tx, schedule = optimizer.build()
    data_identity = identity.data_identity(c)
    sets_spec = eval_sets.parse(c.eval_sets)  # checked on disk by cfg_lib.resolve

    # ----- resume, report, or start -----
    begin = resume.find_start(r, ckpt, data_identity,
                              lambda: ts.abstract_state(tx, r.model_config, mesh))
    if begin.finished_summary is not None:
        summary = {**begin.finished_summary, "already_finished": True}
        if is_main:
            for w in begin.warnings:
                print(f"warning: {w}", file=sys.stderr, flush=True)
            print(f"{c.workdir}: finished at step {begin.restored.step}; nothing to do", flush=True)
        return summary
    restored = begin.restored
    latest = None if restored is None else restored.step
    notes = list(r.notes) + begin.notes

    writer = MetricsWriter(
        c.log_file, paths.as_path(c.workdir) / "tb" if c.tensorboard else None, enabled=is_main,
        total_steps=c.max_iters, start_step=latest or 0,
    )
    stack.callback(writer.close)
    layout = batching.layout_from_config(
        c, data_shards=mesh.shape["data"] * mesh.shape["fsdp"], process_count=jax.process_count())
    run = _Run(r, writer, ckpt, schedule, data_identity, mesh)
    meta: dict[str, Any] = {}
    for w in begin.warnings:
        writer.print(f"warning: {w}")
        writer.write({"iter": latest or 0, "event": "damaged_checkpoint", "warning": w})
    if restored is not None:
        mdef = ts.model_def(r.model_config)
        state, train_state, val_state, meta = (
            restored.state, restored.train_data, restored.val_data, restored.meta)
        run.val_history = [tuple(x) for x in meta.get("val_history", [])]
        run.first_val_loss = meta.get("first_val_loss")
        run.last_eval = dict(meta.get("metrics") or {})
        run.last_saved = latest
        writer.print(f"resuming {c.workdir} from step {latest}")
    else:
        mdef, params = initial_params(r, mesh)
        state = ts.init_state(params, tx, r.model_config, mesh)
        train_state = val_state = {"next_index": 0}
    start = latest or 0
    evaluated_at_start = bool(meta.get("evaluated")) and latest is not None

    for note in notes:
        writer.print(f"note: {note}")
    writer.write({"iter": start, "event": "start", "resumed": latest is not None, "notes": notes,
                  "mesh": dict(zip(sharding.MESH_AXES, r.mesh_shape, strict=True)),
                  "devices": jax.device_count(), "processes": jax.process_count()})

    # ----- data, steps -----
    stream = dict(data_inspect.iterator_kwargs(c), tokenizer=r.tokenizer, row_stats=True)
    train_source = data.make_source(c.dataset_dir, "train", **stream)
    val_source = data.make_source(c.dataset_dir, "val", **stream)
    eval_prompts = _load_eval_prompts(c.eval_prompts_file)
    step_fn = ts.make_train_step(
        mdef, tx, schedule, mesh, seed=c.seed, grad_accum_steps=c.grad_accum_steps,
        loss_chunk_size=c.loss_chunk_size, optimizer=optimizer,
    )
    step_fn.hyper = jax.device_put(step_fn.hyper, ts.replicated(mesh))
    row_fn = evaluation.make_row_loss_step(mdef, mesh, loss_chunk_size=c.loss_chunk_size)
    # The evals call the planned programs (compiled below) by their batch's shape.
    def eval_row_fn(params, batch):
        return progs.call("eval", batching.shape_of(batch), params, batch)

    val_fn = evaluation.ValLoss(val_source, eval_row_fn, mesh, layout.per_row, c.eval_iters)
    run.val_position = int(val_state["next_index"])
    positions = meta.get("data_position", {})
    for name, path in sets_spec.items():
        run.sets[name] = evaluation.ValLoss(
            data.make_source(path, "val", **stream), eval_row_fn, mesh, layout.per_row,
            c.eval_iters, name=name)
        run.set_positions[name] = int(positions.get(f"val/{name}", 0))
    run.first_sets = dict(meta.get("first_eval_sets") or {})

    # ----- the shape plan; every planned program compiled before step 0 -----
    timings = compile_plan.timings_for(r, mesh, cache_dir)
    planned, train_layout = compile_plan.plan_run(
        r, mesh, layout, train_source, [val_fn, *run.sets.values()], timings=timings,
        print_fn=writer.print)
    progs = planned.programs
    for p in (planned.train, planned.eval):
        writer.print(p.describe())
        writer.write({"iter": start, "event": "shape_plan", **p.to_dict()})
    generate = None if eval_prompts is None else compile_plan.generation_job(
        r, eval_prompts, lambda: _generate(mdef.merge(evaluation.decode_layout(state.params, mesh)),
                                           r.tokenizer, eval_prompts, c.eval_max_new_tokens))
    compile_plan.compile_run(planned, r, mesh, tx, step_fn, row_fn, threads=c.compile_threads,
                             generate=generate)
    for record in progs.records:
        writer.write({"iter": start, "event": "compile", "ahead": True, **record})
    if jax.default_backend() != "cpu":  # the preflight's memory check, on the real device
        problem = fit_check.check_programs(progs, mesh)
        if problem:
            raise cfg_lib.ConfigError(
                f"remat/grad_accum_steps/mesh_fsdp: {problem}; `python -m mypt_jax.preflight "
                "--config=<this config>` names the cheapest change that fits")
    run.feed = prefetch.Feed(
        lambda k: prefetch.device_batch(train_source[k], mesh, train_layout, r.tokenizer.eot_id),
        int(train_state["next_index"]), depth=c.prefetch_batches)
    stack.callback(run.feed.close)
    shapes_seen: set[batching.BatchShape] = set()

    # ----- the loop: eval, save, update -----
    step = start
    watcher = stack.enter_context(preemption.Watcher())
    while step < c.max_iters:
        do_eval = step % c.eval_interval == 0 and not (step == start and evaluated_at_start)
        do_save = step % c.checkpoint_interval == 0 and step != run.last_saved
        if do_eval or do_save:
            run.flush(force=True)  # a NaN must stop the run before it reaches a checkpoint
            paused = time.perf_counter()
        if do_eval:
            run.evaluate(step, state, val_fn, mdef, eval_prompts)
        if do_save:
            run.save(step, state, evaluated=do_eval)
        if do_eval or do_save:
            run.window.exclude(time.perf_counter() - paused)  # the step time is the steps'
        batch, info = run.feed.next()
        state, metrics = progs.call("train", info.shape, state, batch, step_fn.hyper)
        shapes_seen.add(info.shape)
        _warn_late(progs, writer, step)
        run.pending.append((step, metrics, info))
        run.flush()
        run.log_saves()
        step += 1
        if step < c.max_iters and watcher.requested(step):
            run.preempted(step, state, watcher.signal_name)
    run.flush(force=True)

    # ----- final eval, checkpoint, exports -----
    record = run.evaluate(c.max_iters, state, val_fn, mdef, eval_prompts, final=True)
    _warn_late(progs, writer, c.max_iters)
    # Medians over the log windows (evals and saves excluded): the steady step.
    step_time_s = statistics.median(run.step_times) if run.step_times else None
    flops_per_s = statistics.median(run.rates) if run.rates else None
    if is_main:
        compile_plan.remember(planned, timings, flops_per_s)
    summary = {
        "workdir": c.workdir,
        "steps": c.max_iters,
        "first_val_loss": run.first_val_loss,
        "final_val_loss": record["val_loss"],
        "final_val_loss_token_weighted": record["val_loss_token_weighted"],
        "gen": record.get("gen", {}),
        "gen_scores": record.get("gen_scores", {}),
        "red_lines": record.get("red_lines", []),
        "eval_sets": {n: {"first": run.first_sets.get(n), "final": record[f"val_loss/{n}"]}
                      for n in run.sets},
        "resumed_from": latest,
        "wall_time_s": time.perf_counter() - t_start,
        "batch_shapes": sorted(str(s) for s in shapes_seen),
        "compiles": progs.records,
        "compile_s": progs.serial_seconds(),
        "compile_wall_s": progs.ahead_wall_s,
        "step_time_s": step_time_s,
        "model_flops_per_s": flops_per_s,
        "shape_plan": planned.summary(),
        "damaged_checkpoints": begin.warnings,
    }
    run.save(c.max_iters, state, evaluated=True, finished=True, summary=summary)
    ckpt.poll(wait=True)
    run.log_saves()
    summary["checkpoint"] = str(ckpt.path(c.max_iters))
    summary["model_dir"] = str(exports.save_model_dir(r, state.params))
    if c.export_upstream:
        summary["upstream_export"] = str(exports.export_upstream(r, state.params, c.max_iters))
    writer.write({"iter": c.max_iters, "event": "finished", **{
        k: summary[k] for k in ("final_val_loss", "wall_time_s")}})
    writer.print(f"finished {c.max_iters} steps in {summary['wall_time_s']:.1f}s; "
                 f"val {summary['first_val_loss']:.4f} -> {summary['final_val_loss']:.4f}")
    return summary
