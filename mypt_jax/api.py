"""`mypt_jax.load(path)`: one entry point for our checkpoints and upstream ones alike.

    model = mypt_jax.load("checkpoints/domain_v5")      # upstream dir, final.pt, or ours
    ids = model.encode("<myPT_user>Hi</myPT_user><myPT_assistant>")
    logits_TxV = model.logits(ids)                        # numpy float32

`load` picks a loader by what the path contains; other modules add theirs with
`register_loader` (e.g. training run directories).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from flax import nnx

from mypt_jax import model_io, upstream
from mypt_jax.model import GPT, ModelConfig, from_params
from mypt_jax.paths import as_path
from mypt_jax.tokenizer import Tokenizer


class MyPTModel:
    """A loaded model: `.config`, `.tokenizer`, `.module` (the nnx GPT), `.source`."""

    def __init__(self, module: GPT, tokenizer: Tokenizer, source: dict[str, Any] | None = None):
        self.module = module
        self.config: ModelConfig = module.config
        self.tokenizer = tokenizer
        self.source = dict(source or {})
        graphdef, state = nnx.split(module)
        self._forward = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t).astype(jnp.float32))
        self._state = state

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def logits(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Full-sequence logits as float32 numpy: 1-D ids -> (T, V), 2-D -> (B, T, V)."""
        ids = np.asarray(token_ids)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids: expected 1-D or 2-D integer ids, got {ids.dtype} {ids.shape}")
        batch = ids[None] if ids.ndim == 1 else ids
        if batch.shape[1] > self.config.block_size:
            raise ValueError(f"token_ids: {batch.shape[1]} tokens exceed block_size {self.config.block_size}")
        if batch.size and (batch.min() < 0 or batch.max() >= self.config.vocab_size):
            raise ValueError(f"token_ids: ids must be in [0, {self.config.vocab_size})")
        out = np.asarray(self._forward(self._state, jnp.asarray(batch, jnp.int32)))
        return out[0] if ids.ndim == 1 else out

    def generate(self, prompts: str | Sequence[str], **sampling) -> list:
        """Batched generation (jitted KV-cache loop); keywords as `decode.generate_text`.

        Greedy when `temperature <= 0`; `preset=` takes the upstream presets by name. Without
        `max_new_tokens`: 100, or what block_size leaves after the longest prompt (warns).
        Returns one `decode.Generation` (prompt, completion, ids, stopped_by) per prompt.
        """
        from mypt_jax import decode

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return decode.generate_text(self, self.tokenizer, prompts, **sampling)

    def __repr__(self) -> str:
        c = self.config
        return (f"MyPTModel({c.generation}: {c.n_layer}L/{c.n_embd}E/{c.n_head}H, "
                f"vocab {c.vocab_size}, block {c.block_size}, {c.param_dtype})")


def _load_ours(path: Path, dtype: str) -> MyPTModel:
    module, _, tokenizer = model_io.load_model(path, dtype=dtype, compute_dtype=dtype)
    return MyPTModel(module, tokenizer, model_io.read_source(path))


def _load_upstream(path: Path, dtype: str) -> MyPTModel:
    ckpt = upstream.read_upstream(path)
    config = ckpt.config.replace(param_dtype=dtype, dtype=dtype)
    return MyPTModel(from_params(config, ckpt.params), ckpt.tokenizer, ckpt.source)


def _is_run_dir(path: Path) -> bool:
    return model_io.is_model_checkpoint(path / model_io.RUN_MODEL_DIR)


def _load_run(path: Path, dtype: str) -> MyPTModel:
    return _load_ours(path / model_io.RUN_MODEL_DIR, dtype)


Loader = Callable[[Path, str], MyPTModel]
_LOADERS: list[tuple[str, Callable[[Path], bool], Loader]] = [
    ("mypt-jax checkpoint", model_io.is_model_checkpoint, _load_ours),
    ("mypt-jax training run", _is_run_dir, _load_run),
    ("upstream checkpoint", upstream.is_upstream_checkpoint, _load_upstream),
]


def register_loader(name: str, matches: Callable[[Path], bool], loader: Loader) -> None:
    """Adds a loader tried before the built-in ones (e.g. for training run directories)."""
    _LOADERS.insert(0, (name, matches, loader))


def load(path: str | os.PathLike, *, dtype: str = "float32") -> MyPTModel:
    """Loads our checkpoint or an upstream one; `dtype` is both parameter and compute dtype."""
    path = as_path(path)  # local, or a URI such as gs://bucket/model
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    for _, matches, loader in _LOADERS:
        if matches(path):
            return loader(path, dtype)
    kinds = ", ".join(name for name, _, _ in _LOADERS)
    raise ValueError(f"{path}: not a checkpoint this package reads (tried: {kinds})")
