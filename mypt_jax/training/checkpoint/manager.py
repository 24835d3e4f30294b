"""Orbax checkpoints of a run: train state and a JSON record (with both data positions), together.

Layout: `<workdir>/checkpoints/<step>/{state, meta}`. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact. Saves are asynchronous on accelerators, with any number of
processes (synchronous on CPU, see `Checkpointer`); which of them survive is
`policy.Retention`'s decision.

The loaders' positions are global (`{"next_index": k}`, the next global batch), so they
live in the JSON record (`meta["data_position"]`), written once by process 0: a checkpoint
restores onto any number of processes, and no per-process file can race the primary's
directory creation (grain's per-process iterator files did both, and are still read from
checkpoints written before).

Restore takes an abstract state carrying the *current* mesh's shardings, so a checkpoint
written on one mesh (or device count) restores onto another.

`workdir` may be a remote URI (`gs://bucket/run`): orbax writes there directly, marking a
finished step with `commit_success.txt` where it cannot rename.

Failures the user can act on are one line each (`CheckpointError`): a save that cannot write
(the path, the OS error and, for a full disk, the free space; the previous checkpoints stay
as they were), and a resume whose newest checkpoints are damaged (`restore_newest` moves each
damaged one aside to `<step>.damaged`, never deletes it, and falls back to the newest intact
one; with none intact the error names them all).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from mypt_jax.data.paths import absolute, as_path
from mypt_jax.interop.model_io import cause_line
from mypt_jax.training.checkpoint import read_faults, state_tree
from mypt_jax.training.checkpoint.policy import Retention, meta_reader
from mypt_jax.training.checkpoint.read_faults import CheckpointError
from mypt_jax.training.checkpoint.run_meta import CHECKPOINTS_DIR

ITEMS = ("state", "train_data", "val_data", "meta")  # the iterator items: older checkpoints
DAMAGED_SUFFIX = ".damaged"


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (orbax and tensorstore wrap them), or None."""
    return next((e for e in read_faults.causes(exc) if isinstance(e, OSError)), None)


def _free_space(path: epath.Path) -> str:
    """"N GiB free on <mount>" for a local path; "" where it cannot be told (a bucket)."""
    probe = path
    while not os.path.exists(str(probe)) and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(str(probe)).free
    except OSError:
        return ""
    return f"{free / 2**20:.1f} MiB free at {probe}"


def write_error(path: epath.Path, exc: BaseException) -> CheckpointError:
    """The one-line error of a save that failed: path, OS error, free space for ENOSPC."""
    os_err = _os_error(exc)
    reason = f"{os_err.strerror or os_err} (errno {os_err.errno})" if os_err else cause_line(exc)
    full = (os_err is not None and os_err.errno == errno.ENOSPC) or "No space left" in str(exc)
    space = _free_space(path) if full else ""
    return CheckpointError(
        f"saving checkpoint {path} failed: {reason}" + (f"; {space}" if space else "")
        + "; the previous checkpoints are intact and a rerun of the same command resumes from "
        "the newest of them")


class _IteratorState:
    """A sink for grain's iterator handler: reads the positions of checkpoints written before
    they moved into the JSON record."""

    def __init__(self):
        self.state: dict | None = None

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode())

    def start_prefetch(self) -> None:  # grain's handler calls it after set_state
        pass


def _positions(position: dict) -> tuple[dict, dict]:
    return {"next_index": int(position["train"])}, {"next_index": int(position["val"])}


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    """`<workdir>/checkpoints`, a URI kept intact (`gs://b/run`, not pathlib's `gs:/b/run`)."""
    return as_path(workdir) / CHECKPOINTS_DIR


@dataclass
class Restored:
    """One checkpoint read back: state (None for meta only), iterator states, meta."""

    step: int
    state: Any
    train_data: dict
    val_data: dict
    meta: dict
    damaged: list[str] = field(default_factory=list)  # "checkpoint N (...): why; moved to ..."


class Checkpointer:
    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        keep: int = 2,
        keep_best: int = 1,
        async_save: bool | None = None,
        read_only: bool = False,
    ):
        # On CPU the devices' memory is the host's: an asynchronous save holds a staged copy
        # of the whole state while the next step allocates its own, and a 750M float32 run
        # (9 GB of weights and AdamW moments) was killed at 24 GB that way. CPU runs save
        # synchronously unless asked (`async_save=True`, the tests); the write is short next
        # to a CPU step.
        if async_save is None:
            async_save = jax.default_backend() != "cpu"
        self.async_save = async_save
        self.directory = checkpoint_dir(workdir)
        self.retention = Retention(keep, keep_best, meta_reader(self.directory))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=self.retention,
            create=not read_only,
            read_only=read_only,
        )
        quiet_orphaned_io()  # before any I/O: orbax logs a failure before it raises it to us
        self.failed = False  # a save failed: close() must not raise the same error again
        self._saving: int | None = None
        self._timing: dict | None = None  # the save in flight: step, start, blocking seconds
        self.timings: list[dict] = []  # committed saves not yet logged (the trainer drains it)
        self.manager = ocp.CheckpointManager(
            absolute(self.directory),
            options=options,
            item_names=ITEMS,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "train_data": grain.checkpoint.CheckpointHandler(),
                "val_data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, *, meta: dict) -> None:
        """Starts a save (asynchronous where enabled) of `state` and its JSON record.

        `meta` is `RunState.to_meta()`: its `triggers` and val loss decide how long the save
        is kept (policy.Retention). Orbax first waits for the previous save. A write that
        fails (now, or in the background for the previous save) raises `CheckpointError`
        naming the step's path.
        """
        self.poll(wait=True)  # orbax would wait for it anyway; this way its timing is kept
        t0 = time.perf_counter()
        self._saving = step
        self.retention.note(step, meta)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:
            self.failed = True
            raise write_error(self.path(step), e) from e
        self._timing = {"step": step, "trigger": meta.get("trigger"),
                        "triggers": list(meta.get("triggers") or ()), "t0": t0,
                        "blocking_s": time.perf_counter() - t0}

    def poll(self, wait: bool = False) -> None:
        """Once the last save is committed, appends its timing to `timings`: {step, trigger,
        triggers, blocking_s, total_s, overlapped_s (the seconds the loop went on while it
        wrote)}."""
        if self._timing is None or (not wait and self.manager.is_saving_in_progress()):
            return
        self.wait()  # a background write that failed raises here, naming its step, unlogged
        t, self._timing = self._timing, None
        total = time.perf_counter() - t["t0"]
        self.timings.append({"step": t["step"], "trigger": t["trigger"], "triggers": t["triggers"],
                             "blocking_s": t["blocking_s"], "total_s": total,
                             "overlapped_s": max(total - t["blocking_s"], 0.0)})

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict, dict]:
        """(state, train position, val position, meta) of `step`. The saved state tree is
        compared with `abstract_state` first (state_tree.reader): a different one raises
        TreeMismatch before any array is read."""
        target, adapt = state_tree.reader(
            step, self.manager.item_metadata(step)["state"], abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                    meta=ocp.args.JsonRestore()),
        )
        state, meta = adapt(restored.state), dict(restored.meta)
        if "data_position" in meta:
            return state, *_positions(meta["data_position"]), meta
        train_sink, val_sink = _IteratorState(), _IteratorState()  # written before: grain files
        self.manager.restore(step, args=ocp.args.Composite(
            train_data=grain.checkpoint.CheckpointRestore(train_sink),
            val_data=grain.checkpoint.CheckpointRestore(val_sink)))
        meta["data_position"] = {"train": train_sink.state["next_index"],
                                 "val": val_sink.state["next_index"]}
        return state, train_sink.state, val_sink.state, meta

    def restore_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def wait(self) -> None:
        """Blocks until the last save is committed; its write error, if any, as CheckpointError."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self.failed = True
            raise write_error(self.path(self._saving), e) from e

    def close(self) -> None:
        if self.failed:  # the error was reported once; closing must not raise it again
            with contextlib.suppress(Exception):
                self.manager.wait_until_finished()  # let the other writer threads end
            with contextlib.suppress(Exception):
                self.manager.close()
            return
        self.wait()
        self.manager.close()

    # ------------------------------------------------------------------ damaged checkpoints

    def quarantine(self, step: int) -> epath.Path:
        """Moves `<step>` aside to `<step>.damaged` (`.damaged.1`, ... if taken); never deletes."""
        src = self.path(step)
        dst = src.parent / f"{step}{DAMAGED_SUFFIX}"
        n = 0
        while dst.exists():
            n += 1
            dst = src.parent / f"{step}{DAMAGED_SUFFIX}.{n}"
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"mypt_jax quarantine {step}")
        self.manager.reload()
        return dst

    def restore_newest(self, abstract_state: Any | None,
                       check_meta: Callable[[int, dict], None] | None = None) -> Restored | None:
        """The newest checkpoint that restores, damaged newer ones moved aside; None if none exist.

        `abstract_state=None` reads the meta only. `check_meta(step, meta)` runs before the
        state is read and may raise: a checkpoint of another architecture is the user's
        error, not damage, and must not be moved. Every process tries the same step and they
        agree on the outcome before moving anything, so a shard file that only one process
        reads still moves the whole checkpoint aside on all of them.
        """
        damaged: list[str] = []
        for step in sorted(self.all_steps(), reverse=True):
            meta, fault = read_faults.attempt(self.restore_meta, step)
            if fault is None:
                if check_meta is not None:
                    check_meta(step, meta)
                if abstract_state is None:
                    return Restored(step, None, {}, {}, meta, damaged)
                restored, fault = read_faults.attempt(self.restore, step, abstract_state)
                if fault is None:
                    return Restored(step, *restored, damaged)
            if fault.kind != read_faults.DAMAGE:
                raise fault.error(step, self.path(step))
            moved = self.quarantine(step)
            damaged.append(f"checkpoint {step} ({self.path(step)}) is damaged: {fault.problem}; "
                           f"moved to {moved}")
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory}: " + " | ".join(damaged)
                + "; start over with a new --workdir, or copy an intact checkpoint there")
        return None


# What orbax logs, with a traceback, about a write it then raises to us (reported as one line).
_ORBAX_REPORTED = ("_SignalingThread.run() raised an exception", "in background save thread",
                   "Save Finalize thread (save_finalize) failed")


def quiet_orphaned_io() -> None:
    """Drops the noise of I/O left running after a failed checkpoint read or write.

    When one array of a restore fails, orbax closes its event loop while tensorstore still
    completes the other reads; each completion prints "RuntimeError: Event loop is closed".
    When a save fails, orbax logs the error with a traceback from its writer thread before
    the save call raises it to us, and its other writer threads then fail at interpreter
    exit. We report each failure as one line (CheckpointError), so these are dropped;
    `MYPT_JAX_DEBUG=1` keeps them. Every other error still prints.
    """
    if os.environ.get("MYPT_JAX_DEBUG") or getattr(sys.excepthook, "_mypt_quiet", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def orphan(exc: BaseException | None, where: object = None) -> bool:
        return (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed") or (
            "_read_array_index_and_device_put" in repr(where))

    def quiet_excepthook(kind, exc, tb):
        if not orphan(exc):
            excepthook(kind, exc, tb)

    def quiet_unraisablehook(info):
        if not orphan(info.exc_value, info.object):
            unraisablehook(info)

    quiet_excepthook._mypt_quiet = True
    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
    logging.getLogger("absl").addFilter(lambda record: not any(
        text in record.getMessage() for text in _ORBAX_REPORTED))

    def orphan_task(record: logging.LogRecord) -> bool:
        # asyncio's "Task exception was never retrieved" for the other reads of a failed restore
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "while reading array index" in str(exc)) and (
            "_read_array_index_and_device_put" not in record.getMessage())

    logging.getLogger("asyncio").addFilter(orphan_task)


def restore_params(
    workdir: str | os.PathLike, abstract_params: Any, step: int | None = None
) -> tuple[Any, int]:
    """Only the parameters of another run's checkpoint (no optimizer state is read)."""
    ckpt = absolute(checkpoint_dir(workdir))
    if step is None:
        mngr = ocp.CheckpointManager(ckpt, options=ocp.CheckpointManagerOptions(read_only=True))
        step = mngr.latest_step()
        mngr.close()
        if step is None:
            raise FileNotFoundError(f"{ckpt}: no checkpoint")
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            ckpt / str(step) / "state",
            args=ocp.args.PyTreeRestore(
                item={"params": abstract_params},
                restore_args={"params": restore_args},
                partial_restore=True,
            ),
        )
    return restored["params"], step
