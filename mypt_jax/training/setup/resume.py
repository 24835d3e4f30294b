"""What a rerun continues from: the newest intact checkpoint, checked against this run first.

Before any state is read, every process agrees on the workdir, the newest step, the config
and the dataset (agreement.py). Then the newest checkpoint's meta must describe the same
architecture (else the workdir belongs to another run: a config error, and nothing is moved)
and the same data (identity.py). Damaged checkpoints are moved aside and the next older one
is tried (checkpoint.restore_newest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mypt_jax.data import paths
from mypt_jax.model.config import ModelConfig
from mypt_jax.training.checkpoint import state_tree
from mypt_jax.training.checkpoint.manager import Checkpointer, Restored
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.setup import agreement, identity
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import freeze as freeze_lib


@dataclass
class Start:
    """Where the loop starts: a restored checkpoint (or None for a fresh run) and log notes."""

    restored: Restored | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # damaged checkpoints moved aside
    finished_summary: dict | None = None  # the run is already done: only report


def check_architecture(saved_run: RunState, r: cfg_lib.Resolved, workdir: str) -> list[str]:
    """Raises for a checkpoint of another model; returns the other config changes as notes."""
    saved = ModelConfig.from_dict(saved_run.model_config, source=f"{workdir} checkpoint")
    diff = r.model_config.diff(saved)
    if saved.param_dtype != r.model_config.param_dtype:
        diff.append(f"param_dtype: {r.model_config.param_dtype!r} != {saved.param_dtype!r}")
    if diff:
        raise cfg_lib.ConfigError(
            f"workdir: {workdir} holds a run of another architecture (config != checkpoint): "
            + "; ".join(diff) + " (use a new --workdir)"
        )
    saved_cfg = saved_run.config
    # Other freezing means another optimizer-state tree: the state restore would fail and the
    # checkpoint would look damaged, so this is the user's choice, named here.
    problem = freeze_lib.resume_problem(
        freeze_lib.Freeze(layers=r.config.freeze_layers, embeddings=r.config.freeze_embeddings),
        saved_cfg, workdir)
    if problem:
        raise cfg_lib.ConfigError(problem)

    def plain(v):  # the saved config went through JSON: tuples came back as lists
        return list(v) if isinstance(v, tuple) else v

    return [
        f"resume: config changed {k}: {saved_cfg[k]!r} -> {r.config[k]!r}"
        for k in r.config.keys()
        if k in saved_cfg and saved_cfg[k] != plain(r.config[k])
        and k not in identity.STREAM_FIELDS
    ]


def _tree_refusal(e: state_tree.TreeMismatch, notes: list[str], workdir: str) -> cfg_lib.ConfigError:
    """A checkpoint whose state tree this run cannot read: the fields that changed, and how to
    go on. Nothing is moved: the checkpoints are intact."""
    changed = [n.removeprefix("resume: config changed ") for n in notes
               if n.startswith("resume: config changed ")]
    return cfg_lib.ConfigError(
        f"resume from {workdir} refused: {e}; config fields changed since it was written: "
        f"{'; '.join(changed) or 'none'}; every checkpoint is left in place; resume with the "
        f"config it was written with, or start a new --workdir with --config.init_from={workdir} "
        "(the weights carry over, the optimizer starts fresh)")


def find_start(r: cfg_lib.Resolved, ckpt: Checkpointer, data_identity: dict,
               abstract_state_fn) -> Start:
    """Agrees with the other processes, then restores the newest intact checkpoint (or none)."""
    c = r.config
    latest = ckpt.latest_step()
    agreement.check(paths.as_path(c.workdir), {
        "the newest checkpoint step": -1 if latest is None else latest,
        "the dataset files": identity.digest(data_identity["dataset"]),
        "the resolved config": identity.digest(c.to_dict()),
    })
    if latest is None:
        return Start(None)
    notes: list[str] = []

    def check(step: int, meta: dict[str, Any]) -> None:
        saved = RunState.from_meta(meta)
        notes[:] = check_architecture(saved, r, c.workdir) + identity.check_resume(
            saved.data_identity, data_identity, dataset_dir=c.dataset_dir, step=step,
            allow=c.allow_data_change)

    head = ckpt.restore_newest(None, check)
    saved = RunState.from_meta(head.meta) if head is not None else None
    if saved is not None and saved.finished and head.step >= c.max_iters:
        return Start(head, notes, head.damaged, dict(saved.summary or {}))
    if head is not None and head.step > c.max_iters:
        raise cfg_lib.ConfigError(
            f"max_iters: {c.max_iters} is below step {head.step} already reached in {c.workdir}")
    try:
        restored = ckpt.restore_newest(abstract_state_fn(), check)
    except state_tree.TreeMismatch as e:
        raise _tree_refusal(e, notes, c.workdir) from e
    warnings = (head.damaged if head else []) + (restored.damaged if restored else [])
    return Start(restored, notes, warnings)
