"""Orbax checkpoints of a run: train state, both data iterators and a JSON record, saved together.

Layout: `<workdir>/checkpoints/<step>/{state, train_data, val_data, meta}`. Orbax writes each
step into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoints intact. Saves are asynchronous on accelerators (synchronous
on CPU and across processes, see `Checkpointer`); the last `keep` steps plus the
`keep_best` lowest val-loss steps survive.

Restore takes an abstract state carrying the *current* mesh's shardings, so a checkpoint
written on one mesh (or device count) restores onto another.

`workdir` may be a remote URI (`gs://bucket/run`): orbax writes there directly, marking a
finished step with `commit_success.txt` where it cannot rename.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from mypt_jax.data.paths import absolute, as_path
from mypt_jax.training.run_meta import CHECKPOINTS_DIR

ITEMS = ("state", "train_data", "val_data", "meta")


class _IteratorState:
    """Stands in for a grain iterator in the grain handler: a frozen state, or a sink.

    Saving a snapshot (not the live iterator) keeps the state exact when the save finishes
    after the loop has moved on; restoring into a sink lets us apply it ourselves.
    """

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode())

    def start_prefetch(self) -> None:
        pass


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    """`<workdir>/checkpoints`, a URI kept intact (`gs://b/run`, not pathlib's `gs:/b/run`)."""
    return as_path(workdir) / CHECKPOINTS_DIR


class Checkpointer:
    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        keep: int = 2,
        keep_best: int = 1,
        async_save: bool = True,
        read_only: bool = False,
    ):
        policies: list[Any] = [pp.LatestN(n=keep)]
        if keep_best:
            policies.append(
                pp.BestN(
                    get_metric_fn=lambda m: m["val_loss"],
                    reverse=True,  # BestN keeps the tail of the sorted list: lowest loss last
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        # Several processes save synchronously: with async saves, grain's handler on a
        # non-primary process can write its iterator file before the primary has created
        # the step's temporary directory (seen as "No such file or directory" in the
        # 2-process test), which kills the run.
        async_save = async_save and jax.process_count() == 1
        # On CPU the devices' memory is the host's: an asynchronous save holds a staged copy
        # of the whole state while the next step allocates its own, and a 750M float32 run
        # (9 GB of weights and AdamW moments) was killed at 24 GB that way. CPU runs save
        # synchronously; the write is short next to a CPU step.
        async_save = async_save and jax.default_backend() != "cpu"
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=pp.AnyPreservationPolicy(policies),
            create=not read_only,
            read_only=read_only,
        )
        self.directory = checkpoint_dir(workdir)
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

    def save(
        self,
        step: int,
        state: Any,
        *,
        train_data: dict,
        val_data: dict,
        meta: dict,
        val_loss: float | None = None,
    ) -> None:
        """Starts an asynchronous save; `val_loss` (when evaluated) ranks the best checkpoints."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                train_data=grain.checkpoint.CheckpointSave(_IteratorState(dict(train_data))),
                val_data=grain.checkpoint.CheckpointSave(_IteratorState(dict(val_data))),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=None if val_loss is None else {"val_loss": float(val_loss)},
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict, dict]:
        """(state, train iterator state, val iterator state, meta) of `step`."""
        train_sink, val_sink = _IteratorState(), _IteratorState()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                train_data=grain.checkpoint.CheckpointRestore(train_sink),
                val_data=grain.checkpoint.CheckpointRestore(val_sink),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, train_sink.state, val_sink.state, dict(restored.meta)

    def restore_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
