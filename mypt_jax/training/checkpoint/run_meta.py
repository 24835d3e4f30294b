"""A run directory's committed checkpoints, read without orbax (plots, summaries, init_from).

`latest_run_meta` reads the newest record's JSON; every reader outside the tests takes it
through `RunState` (`latest_run_state`, `finished_run`).
"""

from __future__ import annotations

import json
from pathlib import Path

from etils import epath

from mypt_jax.data.paths import COMMIT_MARKER, as_path, is_remote
from mypt_jax.training.checkpoint.run_state import RunState

CHECKPOINTS_DIR = "checkpoints"  # <workdir>/checkpoints/<step>/{state,train_data,val_data,meta}


def meta_path(ckpt_dir: epath.Path, step: int) -> epath.Path:
    """Where orbax's JSON item keeps a step's record."""
    return ckpt_dir / str(step) / "meta" / "metadata"


def latest_run_meta(workdir: str | Path) -> dict | None:
    """The JSON record of a run's newest committed checkpoint, or None (read without orbax)."""
    ckpt_dir = as_path(workdir) / CHECKPOINTS_DIR
    if not ckpt_dir.is_dir():
        return None
    remote = is_remote(ckpt_dir)

    def committed(p: epath.Path) -> bool:
        # Locally orbax renames a finished temp dir to the step number; remotely the step
        # directory exists while it is written and the marker says it is complete.
        return (p / "meta").is_dir() and (not remote or (p / COMMIT_MARKER).exists())

    steps = sorted((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit() and committed(p)),
                   reverse=True)
    for step in steps:
        meta_file = meta_path(ckpt_dir, step)
        if meta_file.is_file():
            return json.loads(meta_file.read_text(encoding="utf-8"))
    return None


def latest_run_state(workdir: str | Path) -> RunState | None:
    """The run state of a run's newest committed checkpoint, or None."""
    meta = latest_run_meta(workdir)
    return None if meta is None else RunState.from_meta(meta)


def finished_run(workdir: str, max_iters: int) -> RunState | None:
    """The final checkpoint's run state if the run finished at (or past) max_iters, else None."""
    run = latest_run_state(workdir)
    if run is not None and run.finished and run.step >= max_iters:
        return run
    return None
