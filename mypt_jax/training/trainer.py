"""The training loop: `train(config, workdir) -> summary`: setup, loop, finish.

The loop only updates; everything else is a hook (`register_hooks`, the table of what runs
at a step and in which order). At step `s` (the weights after `s` updates) the eval runs
before the next update and the save after it, as upstream, so a checkpoint at step s holds
the weights after s updates, the train stream positioned at global batch s and the val
stream after that eval: rerunning the same command continues exactly where it stopped.

Deliberate differences from the upstream loop: the train loss, learning rate, gradient
norm, throughput and step time are logged; a final eval at `max_iters` is logged with
`"final": true` and recorded in the last checkpoint; the final checkpoint is step
`max_iters` (upstream wrote `max_iters - 1`); saves follow the checkpoint policy
(training/checkpoint/policy.py; the upstream command line keeps the upstream's save at every
eval); resuming restores the data position and does not repeat any update; a finished run
rerun does nothing but report.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import jax
from ml_collections import config_dict

from mypt_jax.data import paths
from mypt_jax.training import exports, handoff, startup
from mypt_jax.training.checkpoint import preemption
from mypt_jax.training.checkpoint.manager import Checkpointer
from mypt_jax.training.checkpoint.policy import SavePolicy
from mypt_jax.training.compilation import compile_plan
from mypt_jax.training.gold_run import GoldRun
from mypt_jax.training.hooks import Hooks, StepInfo
from mypt_jax.training.observe import goodput
from mypt_jax.training.observe.profiler import Profiler, step_annotation
from mypt_jax.training.observe.step_log import StepLog
from mypt_jax.training.saver import Saver
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.setup.init_source import InitSource
from mypt_jax.training.startup import Run

log = logging.getLogger(__name__)
ACCURACY_KEYS = ("train_masked_token_acc", "val_masked_token_acc", "saturation_detected",
                 "saturation_step")


def train(config: config_dict.ConfigDict, workdir: str | None = None, *,
          init: InitSource | None = None, hand_off: bool = False) -> dict[str, Any]:
    """Trains (or resumes, or reports a finished run) and returns a summary dict.

    The curriculum in one process (training/handoff.py): `init` is the previous phase's
    hand-off, its weights on the devices; `hand_off=True` leaves this run's exports and
    final save to the background and puts its own `Handoff` under the summary's "handoff".
    """
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        watcher = stack.enter_context(preemption.watching())  # before the restore and compiles
        r = cfg_lib.resolve(config, workdir, init=init)
        parts = stack.enter_context(contextlib.ExitStack())  # what the final writes use
        ckpt = Checkpointer(
            r.config.workdir, keep=r.config.keep_checkpoints, keep_best=r.config.keep_best,
            async_save={"auto": None, "on": True, "off": False}[r.config.async_checkpointing])
        parts.callback(ckpt.close)
        run = _setup(r, ckpt, parts, t_start, watcher)
        if not isinstance(run, Run):
            return run  # finished before: the summary it recorded
        run.hand_off = hand_off
        hooks = register_hooks(run)
        _loop(run, hooks)
        summary = _finish(run, hooks)
        if hand_off:  # the writes take over the checkpointer and the log
            summary["handoff"] = handoff.Handoff(
                run.next_init, handoff.FinalWrites(run.final_writes, parts.pop_all()))
        return summary


def _setup(r: cfg_lib.Resolved, ckpt: Checkpointer, stack: contextlib.ExitStack,
           t_start: float, watcher: preemption.Watcher) -> Run | dict[str, Any]:
    run = startup.begin(r, ckpt, t_start)
    if not isinstance(run, Run):
        return run
    stack.callback(run.writer.close)
    startup.announce(run)
    run.watcher = watcher
    run.saver = Saver(ckpt, SavePolicy.from_config(run.c), run.state, run.writer)
    _startup_point(run)  # restored
    startup.build_programs(run, stack, run.saver.nan_stop)
    _startup_point(run)  # compiled
    run.step_log = StepLog(run.writer, r.model_config, log_interval=run.c.log_interval,
                           max_iters=run.c.max_iters, on_nan=run.saver.nan_stop,
                           input_wait=run.feed.take_wait_s)
    run.profiler = Profiler(run.c, run.writer, run.start)
    stack.callback(run.profiler.close)
    if run.c.gold_selection:
        run.gold = GoldRun(r, run.writer, run.state)
        run.gold.announce()
    run.startup_s = (time.perf_counter() - t_start - run.restore_s
                     - run.planned.programs.ahead_wall_s)
    return run


def register_hooks(run: Run) -> Hooks:
    """What runs at a step, in this order. The rules, each with a test
    (tests/test_hooks.py):
    - the log flush fetches the step's metrics before any eval or save (`sync`), so a NaN
      stops the run before it reaches a checkpoint;
    - the eval of step s runs before update s + 1, and the save after the eval, so a save at
      an eval records it;
    - a preemption saves after the step in flight, and before that step's eval;
    - the exports are written before the final save marks the run finished, so a finished
      run has them (a rerun writes any that went missing);
    - the time clock is read at a log flush and agreed by every process.
    """
    c, saver = run.c, run.saver
    hooks = Hooks(flush=run.step_log.flush, flush_every=c.log_interval)
    hooks.add("log", lambda i: run.step_log.flush(), every=c.log_interval)
    if c.checkpoint_minutes:
        hooks.add("save_clock", saver.mark_time_due, seconds=c.checkpoint_minutes * 60)
    hooks.add("saves_committed", lambda i: saver.log_committed(), every=1)
    hooks.add("profiler", run.profiler.on_step, every=1, at_end=True, category="profile")
    hooks.add("preemption", lambda i: _check_preemption(run, i), every=1)
    hooks.add("eval", lambda i: _evaluate(run, i), at_end=True, sync=True, category="eval",
              when=lambda i: run.state.eval_due(i.step, c.eval_interval))
    hooks.add("late_compile", lambda i: _warn_late(run, i.step), every=1, at_end=True)

    def save(info: StepInfo) -> None:
        if info.final:
            _final_save(run, info)
        else:
            saver.save(info.step, info.state, saver.triggers(info.step))
        hooks.reset_clock("save_clock")

    if run.hand_off:  # the exports and the final save, in the background
        hooks.add("hand_off", lambda i: _hand_off(run, i), at_end=True, sync=True,
                  category="export")
    else:
        hooks.add("export", lambda i: _export(run, i), at_end=True, sync=True, category="export")
    hooks.add("save", save, when=lambda i: bool(saver.triggers(i.step)),
              at_end=not run.hand_off, sync=True, category="save_blocking")
    return hooks


def _loop(run: Run, hooks: Hooks) -> None:
    """Updates from `run.start` to `max_iters`, the hooks at every step in between."""
    c, progs, hyper = run.c, run.planned.programs, run.step_fn.hyper
    t0 = time.perf_counter()

    def hooks_at(step: int, state) -> None:
        hooks.run(StepInfo(step, state, run.start, time.perf_counter() - run.t_start,
                           run.step_log.window))
        run.step_log.window.exclude(hooks.take_paused())  # the step time is the steps'

    state, step = run.train_state, run.start
    hooks_at(step, state)
    while step < c.max_iters:
        # The feed read ahead assuming every eval draws as planned; the evals did.
        assert run.state.train_position_at(step) == run.train_position_of(step), step
        batch, batch_info = run.feed.next()
        waited = progs.waited_s
        with step_annotation(step):
            state, metrics = progs.call("train", batch_info.shape, state, batch, hyper)
        run.step_log.window.exclude(progs.waited_s - waited)  # a compile behind the steps
        run.shapes_seen.add(batch_info.shape)
        run.step_log.dispatched(step, metrics, batch_info)
        step += 1
        run.train_state = state
        if step < c.max_iters:  # the last step's hooks are the end's (`_finish`)
            hooks_at(step, state)
    run.loop_s = time.perf_counter() - t0


def _finish(run: Run, hooks: Hooks) -> dict[str, Any]:
    """The end hooks (final eval, exports, final save), the goodput table."""
    c, writer, progs = run.c, run.writer, run.planned.programs
    in_loop = sum(hooks.seconds.values())
    progs.join()  # a program the run never reached still compiled behind it: its record
    for record in progs.behind:
        writer.write({"iter": c.max_iters, "event": "compile", "ahead": True, "behind": True,
                      **record})
    hooks.run(StepInfo(c.max_iters, run.train_state, run.start,
                       time.perf_counter() - run.t_start, run.step_log.window, final=True))
    summary = dict(run.state.summary, saves=list(run.state.saves), **run.exports)
    summary["checkpoint"] = str(run.ckpt.path(c.max_iters))
    run.step_log.input_wait_s += run.feed.take_wait_s()
    summary["goodput"] = table = goodput.table(
        time.perf_counter() - run.t_start, run.loop_s,
        compile=progs.ahead_wall_s + progs.waited_s + run.late_compile_s, restore=run.restore_s,
        startup=run.startup_s, eval=hooks.seconds["eval"],
        save_blocking=hooks.seconds["save_blocking"], input_wait=run.step_log.input_wait_s,
        profile=hooks.seconds["profile"], export=hooks.seconds["export"],
        in_loop=in_loop + run.late_compile_s + progs.waited_s + run.step_log.input_wait_s)
    writer.write({"iter": c.max_iters, "event": "goodput", **table})
    for line in goodput.lines(table):
        writer.print(line)
    writer.write({"iter": c.max_iters, "event": "finished", **{
        k: summary[k] for k in ("final_val_loss", "wall_time_s")}})
    writer.print(f"finished {c.max_iters} steps in {summary['wall_time_s']:.1f}s; "
                 f"val {summary['first_val_loss']:.4f} -> {summary['final_val_loss']:.4f}")
    return summary


# ----------------------------------------------------------------------------- the hooks


def _evaluate(run: Run, info: StepInfo) -> None:
    record = run.evaluator.run(info.step, info.state.params, run.state, final=info.final)
    train_loss = run.step_log.take_train_loss()  # the steps since the previous eval
    if run.gold is not None:
        run.gold.on_eval(info.step, info.state.params, record, train_loss, info.final)
    if info.final:
        run.final_record = record


def _check_preemption(run: Run, info: StepInfo) -> None:
    """Call at the same points on every process: the start-up's, then every step (jax's
    service agrees on the point)."""
    if run.watcher.requested():
        if run.step_log is not None:
            run.step_log.flush()  # a NaN must not be saved as the resume point
        run.saver.preempted(info.step, info.state, run.watcher.signal_name,
                            trained=info.step > run.start)


def _startup_point(run: Run) -> None:
    """A stop asked for during the start-up lands here, before anything new was trained."""
    _check_preemption(run, StepInfo(run.start, run.train_state, run.start, 0.0))


def _warn_late(run: Run, step: int) -> None:
    """A program compiled during the run (a shape the plan did not foresee) is a warning."""
    progs = run.planned.programs
    for record in progs.late:
        warning = (f"{record['program']} program for {record['shape']} compiled during the run "
                   f"({record['seconds']:.1f}s): a shape outside the plan")
        log.warning("step %d: %s", step, warning)
        run.writer.print(f"warning: step {step}: {warning}")
        run.writer.write({"iter": step, "event": "compile", "ahead": False, "warning": warning,
                          **record})
        run.late_compile_s += record["seconds"]
    progs.late.clear()


def _export(run: Run, info: StepInfo) -> None:
    """The exports, before the final save marks the run finished (exports.py)."""
    run.exports = exports.write(run.r, info.state.params, info.step)


def _hand_off(run: Run, info: StepInfo) -> None:
    """The end of a run that hands off: its summary now, a copy of its weights for the next
    phase, and its final writes (the exports, then the final save that marks the run
    finished) as `run.final_writes`, which `train` starts in the background."""
    summary = _final_summary(run)
    state, step, r = info.state, info.step, run.r
    run.state.summary = summary
    run.exports = {key: str(path) for key, path in exports.targets(r).items()}
    run.next_init = InitSource("run", paths.as_path(r.config.workdir), r.model_config,
                               r.tokenizer, r.config.to_dict(),
                               params=handoff.weights_for_next(state.params))

    def final_writes() -> None:
        exports.write(r, state.params, step)
        run.saver.save(step, state, ["final"], finished=True, summary=summary)
        run.saver.log_committed(wait=True)

    run.final_writes = final_writes


def _final_save(run: Run, info: StepInfo) -> None:
    """The summary, then the final checkpoint (recording it), waited for."""
    run.saver.save(info.step, info.state, ["final"], finished=True, summary=_final_summary(run))
    run.saver.log_committed(wait=True)


def _final_summary(run: Run) -> dict[str, Any]:
    """The run's summary at its end; its measured compile seconds and step rate are kept for
    the next run's plan (`compile_plan.remember`)."""
    step_time_s, flops_per_s = run.step_log.steady()
    if jax.process_index() == 0:
        compile_plan.remember(run.planned, run.timings, flops_per_s)
    return _summary(run, step_time_s, flops_per_s)


def _summary(run: Run, step_time_s: float | None, flops_per_s: float | None) -> dict[str, Any]:
    record, progs, c = run.final_record, run.planned.programs, run.c
    return {
        "workdir": c.workdir,
        "steps": c.max_iters,
        "first_val_loss": run.state.first_val_loss,
        "final_val_loss": record["val_loss"],
        "final_val_loss_token_weighted": record["val_loss_token_weighted"],
        "gen": record.get("gen", {}),
        "gen_scores": record.get("gen_scores", {}),
        "red_lines": record.get("red_lines", []),
        "eval_sets": {n: {"first": run.state.first_sets.get(n), "final": record[f"val_loss/{n}"]}
                      for n in run.evaluator.sets},
        "resumed_from": run.begin.restored.step if run.begin.restored is not None else None,
        "wall_time_s": time.perf_counter() - run.t_start,
        "batch_shapes": sorted(str(s) for s in run.shapes_seen),
        "compiles": progs.records,
        "compile_s": progs.serial_seconds(),
        "compile_wall_s": progs.ahead_wall_s,
        "step_time_s": step_time_s,
        "model_flops_per_s": flops_per_s,
        "shape_plan": run.planned.summary(),
        "damaged_checkpoints": run.begin.warnings,
        # The final eval's masked-token accuracy and saturation flags, where scored.
        **{k: record[k] for k in ACCURACY_KEYS if k in record},
        "gold": None if run.gold is None else run.gold.summary(),
    }
