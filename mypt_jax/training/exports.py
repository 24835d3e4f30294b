"""The finished run's weights written for other tools: our model dir, and the upstream's format.

They are written before the final checkpoint marks the run finished (the `export` hook runs
before the final save), each one whole or not at all: into a staged sibling, then swapped for
the old one. A rerun of a finished run writes any export that is `missing`, so one deleted
(or lost to a failure after the final save) comes back.

Multi-host: the weights are gathered to every process, process 0 writes, the rest wait.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from mypt_jax.data import paths
from mypt_jax.training.setup import config as cfg_lib

UPSTREAM_DIR = "upstream"


def targets(r: cfg_lib.Resolved) -> dict[str, epath.Path]:
    """The summary key -> directory of each export this run writes."""
    from mypt_jax.interop import model_io

    workdir = paths.as_path(r.config.workdir)
    out = {"model_dir": workdir / model_io.RUN_MODEL_DIR}
    if r.config.export_upstream:
        out["upstream_export"] = workdir / UPSTREAM_DIR
    return out


def write(r: cfg_lib.Resolved, params, step: int, only: list[str] | None = None
          ) -> dict[str, str]:
    """Writes the exports (`only` these summary keys) of `params`; returns key -> path."""
    todo = {key: dst for key, dst in targets(r).items() if only is None or key in only}
    return write_to(r, params, step, todo)


def write_to(r: cfg_lib.Resolved, params, step: int, dirs: dict[str, epath.Path]
             ) -> dict[str, str]:
    """Writes `params` as each format key ("model_dir", "upstream_export") into its
    directory, whole; returns key -> path. Every process calls it (the weights are gathered)."""
    writers = {"model_dir": _write_model_dir, "upstream_export": _write_upstream}
    host = jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))
    if jax.process_index() == 0:
        for key, dst in dirs.items():
            _replace_dir(dst, lambda path, key=key: writers[key](r, host, step, path))
    multihost_utils.sync_global_devices("mypt_jax exports written")
    return {key: str(dst) for key, dst in dirs.items()}


def missing(r: cfg_lib.Resolved) -> list[str]:
    """The summary keys of the exports not on disk."""
    return [key for key, dst in targets(r).items() if not dst.exists()]


def _replace_dir(dst: epath.Path, write_to: Callable[[epath.Path], object]) -> None:
    """`dst` becomes the directory `write_to` writes, whole: the old one stays until the new
    one is complete, and is then swapped out."""
    staged, old = dst.parent / f".{dst.name}.new", dst.parent / f".{dst.name}.old"
    for leftover in (staged, old):
        if leftover.exists():
            leftover.rmtree()
    write_to(staged)
    if dst.exists():
        dst.rename(old)
    staged.rename(dst)
    if old.exists():
        old.rmtree()


def _write_model_dir(r: cfg_lib.Resolved, host, step: int, dst: epath.Path) -> None:
    """The final weights as our model dir (`<workdir>/model`), for generate/evaluate/convert."""
    from mypt_jax.interop import model_io

    model_io.save_model(dst, host, r.model_config, r.tokenizer,
                        source={"run": paths.describe_path(r.config.workdir), "step": step})


def _write_upstream(r: cfg_lib.Resolved, host, step: int, dst: epath.Path) -> None:
    from mypt_jax.interop import upstream

    c = r.config
    fields = {
        "batch_size": c.batch_size, "use_loss_mask": c.use_loss_mask,
        "batch_sampling_mode": c.batch_sampling_mode, "episode_min_tokens": c.episode_min_tokens,
        "epoch_seed": c.epoch_seed, "epoch_shuffle": c.epoch_shuffle, "save_dtype": "bf16",
    }
    # The upstream saves bf16 (its fit() hard-codes save_dtype); so do we.
    upstream.write_upstream(dst, host, r.model_config, r.tokenizer, dtype="bf16",
                            training_state={"step": step}, training_fields=fields)
