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

from mypt_jax.data import batching
from mypt_jax.data.paths import as_path
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.interop import model_io, upstream
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.transformer import GPT, from_params


class MyPTModel:
    """A loaded model: `.config`, `.tokenizer`, `.module` (the nnx GPT), `.source`."""

    def __init__(self, module: GPT, tokenizer: Tokenizer, source: dict[str, Any] | None = None):
        self.module = module
        self.config: ModelConfig = module.config
        self.tokenizer = tokenizer
        self.source = dict(source or {})
        graphdef, state = nnx.split(module)
        self._forward = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t).astype(jnp.float32))
        self._forward_packed = jax.jit(lambda st, t, p, s: nnx.merge(graphdef, st)(
            t, positions_BxT=p, segment_ids_BxT=s).astype(jnp.float32))
        self._state = state

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def logits(self, token_ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray):
        """Full-sequence logits as float32 numpy: 1-D ids -> (T, V), 2-D -> (B, T, V).

        A list of sequences of different lengths gives a list of (T_i, V): they are packed
        into as few rows as fit (attention stays within a sequence), so no padding is computed.
        """
        if _is_ragged(token_ids):
            return self._packed_logits([self._checked(s, ndim=1) for s in token_ids])
        ids = self._checked(token_ids)
        batch = ids[None] if ids.ndim == 1 else ids
        out = np.asarray(self._forward(self._state, jnp.asarray(batch, jnp.int32)))
        return out[0] if ids.ndim == 1 else out

    def _checked(self, token_ids, ndim: int | None = None) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim not in ((ndim,) if ndim else (1, 2)) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids: expected {ndim or '1-D or 2'}-D integer ids, got "
                             f"{ids.dtype} {ids.shape}")
        if ids.shape[-1] > self.config.block_size:
            raise ValueError(f"token_ids: {ids.shape[-1]} tokens exceed block_size {self.config.block_size}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token_ids: ids must be in [0, {self.config.vocab_size})")
        return ids

    def _packed_logits(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(s) for s in seqs]
        length = next(n for n in batching.default_length_buckets(self.config.block_size)
                      if n >= max(sizes))
        plan = batching.first_fit(sizes, length)
        rows = next(r for r in batching.row_buckets(len(seqs), 1) if r >= len(plan))
        items = np.zeros((len(seqs), max(sizes)), np.int32)
        for i, s in enumerate(seqs):
            items[i, :len(s)] = s
        packed = batching.place(plan, sizes, {"inputs": items}, rows, length)
        out_RxTxV = np.asarray(self._forward_packed(
            self._state, *(jnp.asarray(packed[k]) for k in ("inputs", "positions", "segment_ids"))))
        result: list[np.ndarray] = [None] * len(seqs)  # type: ignore[list-item]
        for r, members in enumerate(plan):
            at = 0
            for i in members:
                result[i] = out_RxTxV[r, at:at + sizes[i]]
                at += sizes[i]
        return result

    def generate(self, prompts: str | Sequence[str], **sampling) -> list:
        """Batched generation (jitted KV-cache loop); keywords as `decode.generate_text`.

        Greedy when `temperature <= 0`; `preset=` takes the upstream presets by name. Without
        `max_new_tokens`: 100, or what block_size leaves after the longest prompt (warns).
        Returns one `decode.Generation` (prompt, completion, ids, stopped_by) per prompt.
        """
        from mypt_jax.decoding import decode

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return decode.generate_text(self, self.tokenizer, prompts, **sampling)

    def __repr__(self) -> str:
        c = self.config
        return (f"MyPTModel({c.generation}: {c.n_layer}L/{c.n_embd}E/{c.n_head}H, "
                f"vocab {c.vocab_size}, block {c.block_size}, {c.param_dtype})")


def _is_ragged(token_ids) -> bool:
    """A list of sequences of different lengths (np.asarray cannot make a 2-D array of it)."""
    if isinstance(token_ids, np.ndarray) or not len(token_ids):
        return False
    first = token_ids[0]
    return not np.isscalar(first) and len({len(s) for s in token_ids}) > 1


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
