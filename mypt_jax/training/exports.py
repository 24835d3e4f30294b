"""The finished run's weights written for other tools: our model dir, and the upstream's format.

Multi-host: the weights are gathered to every process, process 0 writes, the rest wait.
"""

from __future__ import annotations

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from mypt_jax.data import paths
from mypt_jax.training.setup import config as cfg_lib


def export_upstream(r: cfg_lib.Resolved, params, step: int) -> epath.Path:
    from mypt_jax.interop import upstream

    c = r.config
    dst = paths.as_path(c.workdir) / "upstream"
    host = jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))
    if jax.process_index() != 0:
        return dst
    if dst.exists():
        dst.rmtree()
    fields = {
        "batch_size": c.batch_size, "use_loss_mask": c.use_loss_mask,
        "batch_sampling_mode": c.batch_sampling_mode, "episode_min_tokens": c.episode_min_tokens,
        "epoch_seed": c.epoch_seed, "epoch_shuffle": c.epoch_shuffle, "save_dtype": "bf16",
    }
    # The upstream saves bf16 (its fit() hard-codes save_dtype); so do we.
    return upstream.write_upstream(
        dst, host, r.model_config, r.tokenizer, dtype="bf16",
        training_state={"step": step}, training_fields=fields,
    )


def save_model_dir(r: cfg_lib.Resolved, params) -> epath.Path:
    """The final weights as our model dir (`<workdir>/model`), for generate/evaluate/convert."""
    from mypt_jax.interop import model_io

    dst = paths.as_path(r.config.workdir) / model_io.RUN_MODEL_DIR
    host = jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))
    if jax.process_index() == 0:
        if dst.exists():
            dst.rmtree()
        model_io.save_model(dst, host, r.model_config, r.tokenizer,
                            source={"run": paths.describe_path(r.config.workdir),
                                    "step": r.config.max_iters})
    multihost_utils.sync_global_devices("mypt_jax model dir written")
    return dst
