"""Upstream (PyTorch MyPT) checkpoints: reading and writing checkpoint directories.

An upstream checkpoint directory holds `model.pt` (torch zip: a payload dict with
`state_dict`, or a raw state_dict), `config.json` (GPTConfig fields), `tokenizer.json` and
`training_state.json` (UPSTREAM_MODEL.md §2). Older runs left one legacy file
(`final.pt` / `latest.pt`: a dict with `config`, `model_state_dict`, `tokenizer`, `step`).
Reading never imports torch (see torch_pickle.py); the key table (`state_dict.py`) is the
only place the upstream parameter names appear.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from mypt_jax.data.paths import as_path, is_remote, read_json
from mypt_jax.data.tokenizer import BASE_VOCAB_SIZE, Tokenizer, TokenizerError, head_tokenizer
from mypt_jax.interop import torch_pickle
from mypt_jax.interop.state_dict import (
    EMBEDDING_KEY,
    PAYLOAD_DTYPES,
    TIED_KEY,
    UpstreamError,
    check_tokenizer,
    params_from_state_dict,
    state_dict_from_params,
)
from mypt_jax.model.config import ConfigError, ModelConfig
from mypt_jax.model.param_table import param_shapes

LEGACY_FILES = ("final.pt", "latest.pt")


# ----------------------------------------------------------------------------------------
# Reading a checkpoint directory (or legacy file)
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class UpstreamCheckpoint:
    config: ModelConfig
    params: dict[str, Any]  # our layout, numpy arrays
    tokenizer: Tokenizer
    upstream_config: dict[str, Any]  # the raw config.json (training fields kept for export)
    training_state: dict[str, Any]
    source: dict[str, Any]  # what was found: path, format, generation, payload dtype, notes


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.exists():
        if required:
            raise UpstreamError(f"{path}: file not found")
        return None
    obj = read_json(path, UpstreamError)
    if not isinstance(obj, dict):
        raise UpstreamError(f"{path}: expected a JSON object")
    return obj


def is_upstream_checkpoint(path: str | os.PathLike) -> bool:
    path = as_path(path)
    if path.is_file():
        return path.suffix == ".pt"
    return (path / "model.pt").exists() or any((path / f).exists() for f in LEGACY_FILES)


def _default_tokenizer(cfg: ModelConfig) -> Tokenizer:
    # Without tokenizer.json upstream builds the map of its own era; the era follows the arch.
    tok = head_tokenizer() if cfg.generation == "head" else Tokenizer()
    return Tokenizer.from_state({**tok.get_state(), "model_vocab_size": cfg.vocab_size})


def _split_payload(obj: Any, source: str) -> tuple[Mapping[str, Any], str, Any]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd, kind = obj["state_dict"], "dict"
    else:
        sd, kind = obj, "raw"
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise UpstreamError(f"{source}: expected a state_dict (a mapping of names to tensors)")
    for k, v in sd.items():
        if not hasattr(v, "shape"):
            raise UpstreamError(f"{source}: key {k!r} is not a tensor ({type(v).__name__})")
    return sd, kind, obj.get("checkpoint_dtype") if kind == "dict" else None


def read_upstream(path: str | os.PathLike) -> UpstreamCheckpoint:
    """Reads an upstream checkpoint directory or legacy `final.pt`/`latest.pt` without torch.

    A remote one (`gs://...`) is copied to a local temp dir first (the reader seeks in the
    zip); the returned arrays are in memory, so the copy is deleted on return.
    """
    if is_remote(path):
        return _read_remote(as_path(path))
    path = Path(path)
    if path.is_dir() and not (path / "model.pt").exists():
        legacy = [path / f for f in LEGACY_FILES if (path / f).exists()]
        if not legacy:
            raise UpstreamError(f"{path}: no model.pt, final.pt or latest.pt found")
        path = legacy[0]
    if path.is_file():
        return _read_legacy(path)
    model_pt = path / "model.pt"
    cfg_json = _read_json(path / "config.json", required=True)
    cfg = _config(cfg_json, path / "config.json")
    tok_state = _read_json(path / "tokenizer.json", required=False)
    notes = []
    if tok_state is None:
        tokenizer = _default_tokenizer(cfg)
        notes.append("no tokenizer.json: using the default token map of this generation")
    else:
        tokenizer = _tokenizer(tok_state, path / "tokenizer.json")
    check_tokenizer(tokenizer, cfg, str(path / "tokenizer.json"))
    training_state = _read_json(path / "training_state.json", required=False) or {}
    obj = torch_pickle.load(model_pt, lazy=True)
    sd, kind, ckpt_dtype = _split_payload(obj, str(model_pt))
    params, info = params_from_state_dict(sd, cfg, str(model_pt))
    declared = "pos_encoding" in cfg_json
    source = {
        "path": str(path.resolve()), "format": f"upstream directory, {kind} payload",
        "generation": cfg.generation,
        "generation_evidence": "config.json architecture fields" if declared
        else "config.json without architecture fields (seed era); key set agrees",
        "payload_dtype": info.payload_dtype, "checkpoint_dtype": ckpt_dtype,
        "tied_weight_storage": info.tied_storage, "notes": notes + info.notes,
    }
    return UpstreamCheckpoint(cfg, params, tokenizer, cfg_json, training_state, source)


def _read_remote(path: epath.Path) -> UpstreamCheckpoint:
    names = ("model.pt", "config.json", "tokenizer.json", "training_state.json", *LEGACY_FILES)
    with tempfile.TemporaryDirectory(prefix="mypt_upstream_") as tmp:
        if path.is_dir():
            local = Path(tmp) / path.name
            local.mkdir()
            todo = [(path / n, local / n) for n in names if (path / n).exists()]
        else:
            local = Path(tmp) / path.name
            todo = [(path, local)]
        for src, dst in todo:
            with src.open("rb") as f, dst.open("wb") as out:
                shutil.copyfileobj(f, out, 1 << 22)
        ckpt = read_upstream(local)
        ckpt.params = _materialize(ckpt.params)  # nothing may still point into the temp dir
    ckpt.source["path"] = str(path)
    return ckpt


def _materialize(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _materialize(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}


def _config(cfg_json: Mapping[str, Any], source: Path) -> ModelConfig:
    try:
        return ModelConfig.from_upstream(cfg_json, str(source))
    except (ConfigError, TypeError) as e:
        raise UpstreamError(str(e)) from None


def _tokenizer(state: Mapping[str, Any], source: Path | str) -> Tokenizer:
    try:
        return Tokenizer.from_state(state, source=str(source))
    except TokenizerError as e:
        msg = str(e)  # Tokenizer's own map validation does not name the file
        raise UpstreamError(msg if str(source) in msg else f"{source}: {msg}") from None


def _read_legacy(path: Path) -> UpstreamCheckpoint:
    obj = torch_pickle.load(path, lazy=True)
    if not isinstance(obj, Mapping) or "model_state_dict" not in obj or "config" not in obj:
        raise UpstreamError(f"{path}: not a legacy checkpoint (needs 'config' and 'model_state_dict')")
    cfg_json = dict(obj["config"])
    cfg = _config(cfg_json, Path(f"{path}['config']"))
    tok_state = obj.get("tokenizer")
    tokenizer = (_tokenizer(tok_state, f"{path}['tokenizer']") if tok_state
                 else _default_tokenizer(cfg))
    check_tokenizer(tokenizer, cfg, f"{path}['tokenizer']")
    sd, _, _ = _split_payload(obj["model_state_dict"], f"{path}['model_state_dict']")
    params, info = params_from_state_dict(sd, cfg, f"{path}['model_state_dict']")
    step = obj.get("step")
    source = {
        "path": str(path.resolve()), "format": "upstream legacy single file",
        "generation": cfg.generation, "generation_evidence": "legacy config dict; key set agrees",
        "payload_dtype": info.payload_dtype, "checkpoint_dtype": None,
        "tied_weight_storage": info.tied_storage, "notes": info.notes,
    }
    training_state = {"step": step} if isinstance(step, int) else {}
    return UpstreamCheckpoint(cfg, params, tokenizer, cfg_json, training_state, source)


# ----------------------------------------------------------------------------------------
# Writing a checkpoint directory
# ----------------------------------------------------------------------------------------

def write_state_dict_dir(
    dst: str | os.PathLike,
    payload: Any,
    files: Mapping[str, Any],
    *,
    copy_from: str | os.PathLike | None = None,
) -> Path:
    """Writes DST atomically: (optional copy of another dir), JSON files, then model.pt.

    DST may be remote (`gs://...`): staged locally, uploaded with model.pt last.
    """
    from mypt_jax.interop import model_io  # staged_dir; model_io pulls in orbax, needed only here

    dst = as_path(dst)
    if dst.exists():
        raise UpstreamError(f"{dst}: already exists; refusing to overwrite")
    with model_io.staged_dir(dst, last="model.pt") as tmp:
        if copy_from is not None:
            shutil.copytree(copy_from, tmp, dirs_exist_ok=True)
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
        torch_pickle.save(payload, tmp / "model.pt")
    return dst


def write_upstream(
    dst: str | os.PathLike,
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    *,
    dtype: str = "fp32",
    training_state: Mapping[str, Any] | None = None,
    training_fields: Mapping[str, Any] | None = None,
) -> Path:
    """An upstream-format directory that upstream `GPT.load` reads unchanged (device "cpu")."""
    if dtype not in PAYLOAD_DTYPES:
        raise UpstreamError(f"export dtype {dtype!r}: expected one of {sorted(PAYLOAD_DTYPES)}")
    check_tokenizer(tokenizer, cfg, "tokenizer")
    payload = {"state_dict": state_dict_from_params(params, cfg, dtype),
               "checkpoint_dtype": dtype, "model_dtype": "float32"}
    state = dict(training_state or {})
    state.setdefault("model_dtype_at_save", "float32")
    state["checkpoint_dtype"] = dtype
    state.pop("optimizer_file", None)  # no optimizer.pt is written
    files = {"config.json": cfg.to_upstream(training_fields),
             "tokenizer.json": tokenizer.get_state(), "training_state.json": state}
    return write_state_dict_dir(dst, payload, files)


# ----------------------------------------------------------------------------------------
# init-special: the step that made domain_v5_sft_ready (UPSTREAM_MODEL.md §3)
# ----------------------------------------------------------------------------------------

# Phase 3a targets (by tag name; ids come from the checkpoint's own token map) and the
# strings whose GPT-2 token embeddings are averaged into each.
PHASE3A_SOURCES: dict[str, tuple[str, ...]] = {
    "myPT_system_open": ("system", ":", "<"),
    "myPT_system_close": ("system", ">", "/"),
    "myPT_user_open": ("user", ":", "<"),
    "myPT_user_close": ("user", ">", "/"),
    "myPT_assistant_open": ("assistant", ":", "<"),
    "myPT_assistant_close": ("assistant", ">", "/"),
    "myPT_eot": ("end", ".", "\n"),
}


def special_embedding_rows(tokenizer: Tokenizer) -> dict[int, list[int]]:
    """Target id -> the GPT-2 ids whose embedding rows are averaged into it."""
    out = {}
    for name, strings in PHASE3A_SOURCES.items():
        ids = [i for s in strings for i in tokenizer.encode(s) if i < BASE_VOCAB_SIZE]
        out[tokenizer.id_of(name)] = ids
    return out


def init_special_embeddings(
    state_dict: Mapping[str, np.ndarray], tokenizer: Tokenizer, *, tie_weights: bool,
    scale: float = 1.0,
) -> OrderedDict[str, np.ndarray]:
    """Returns a float32 state_dict whose special-tag rows are the scaled mean of source rows.

    Like upstream run on CPU: rows are averaged in float32 and written to the embedding and
    to lm_head.weight (one shared matrix when tied); lm_head.bias and all else unchanged.
    """
    out = OrderedDict((k, np.asarray(v).astype(np.float32)) for k, v in state_dict.items())
    emb = out[EMBEDDING_KEY]
    head = emb if tie_weights else out[TIED_KEY]
    if tie_weights:
        out[TIED_KEY] = emb
    for target, ids in special_embedding_rows(tokenizer).items():
        row = np.stack([emb[i] for i in ids]).mean(axis=0, dtype=np.float32) * np.float32(scale)
        emb[target] = row
        head[target] = row
    return out


def init_special_dir(src: str | os.PathLike, dst: str | os.PathLike, *, scale: float = 1.0) -> dict:
    """SRC upstream dir -> DST upstream dir (all files copied, model.pt rewritten)."""
    src = Path(src)
    model_pt = src / "model.pt"
    if not model_pt.exists():
        raise UpstreamError(f"{model_pt}: file not found (init-special needs an upstream directory)")
    ckpt = read_upstream(src)  # validates config, keys, shapes and token map
    obj = torch_pickle.load(model_pt)
    sd, kind, _ = _split_payload(obj, str(model_pt))
    new_sd = init_special_embeddings(sd, ckpt.tokenizer, tie_weights=ckpt.config.tie_weights,
                                     scale=scale)
    payload = {**obj, "state_dict": new_sd} if kind == "dict" else new_sd
    write_state_dict_dir(dst, payload, {}, copy_from=src)
    return {"targets": {str(k): v for k, v in special_embedding_rows(ckpt.tokenizer).items()},
            "payload": kind, "scale": scale}


def param_count(cfg: ModelConfig) -> int:
    return sum(math.prod(s) for s in _flat_shapes(param_shapes(cfg)))


def _flat_shapes(tree: Mapping) -> list[tuple[int, ...]]:
    out = []
    for v in tree.values():
        out.extend(_flat_shapes(v) if isinstance(v, Mapping) else [v])
    return out
