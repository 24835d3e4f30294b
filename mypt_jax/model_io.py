"""Our model checkpoint directory: weights (orbax) with the model config and token map beside them.

Layout of DST:
  config.json     ModelConfig.to_dict()
  tokenizer.json  Tokenizer.get_state() (the upstream schema)
  params/         orbax StandardCheckpointer of the parameters as a plain nested dict
  source.json     where the weights came from (import path, generation, payload dtype ...)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mypt_jax.model import GPT, ConfigError, ModelConfig, from_params, param_shapes, param_shardings
from mypt_jax.tokenizer import Tokenizer, TokenizerError

PARAMS_DIR = "params"


class ModelCheckpointError(ValueError):
    pass


def is_model_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / PARAMS_DIR).is_dir() and (path / "config.json").is_file()


def _pure_params(model_or_params: GPT | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model_or_params, GPT):
        return nnx.to_pure_dict(nnx.state(model_or_params, nnx.Param))
    return dict(model_or_params)


def save_model(
    path: str | os.PathLike,
    model_or_params: GPT | Mapping[str, Any],
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Writes DST atomically (temp dir + rename); refuses to overwrite an existing DST.

    Arrays are stored in their own dtype; `config.param_dtype` must name it.
    """
    path = Path(path)
    if path.exists():
        raise ModelCheckpointError(f"{path}: already exists; refusing to overwrite")
    params = _pure_params(model_or_params)
    shapes = param_shapes(config)
    got = jax.tree.map(lambda a: tuple(a.shape), params)
    if got != shapes:
        raise ModelCheckpointError(f"{path}: parameter shapes do not match the config: {got} vs {shapes}")
    dtypes = {str(np.dtype(a.dtype)) for a in jax.tree.leaves(params)}
    if dtypes != {config.param_dtype}:
        raise ModelCheckpointError(
            f"{path}: parameters are {sorted(dtypes)} but config.param_dtype is {config.param_dtype}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save((tmp / PARAMS_DIR).absolute(), params)  # orbax refuses relative paths
        ckptr.wait_until_finished()
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "source.json").write_text(json.dumps(dict(source or {}), indent=2), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def read_config(path: str | os.PathLike) -> ModelConfig:
    file = Path(path) / "config.json"
    try:
        return ModelConfig.from_dict(json.loads(file.read_text(encoding="utf-8")), source=str(file))
    except FileNotFoundError:
        raise ModelCheckpointError(f"{file}: file not found") from None
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise ModelCheckpointError(f"{file}: {e}") from None


def load_params(
    path: str | os.PathLike, config: ModelConfig | None = None, *, mesh: jax.sharding.Mesh | None = None
) -> dict[str, Any]:
    """The stored parameters (numpy without a mesh, sharded jax arrays with one), stored dtype."""
    path = Path(path)
    config = config or read_config(path)
    dtype = np.dtype(config.param_dtype)
    shapes = param_shapes(config)
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    if mesh is None:
        target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), shapes, is_leaf=is_shape)
    else:
        shardings = param_shardings(config, mesh)
        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s, dtype, sharding=sh),
                              shapes, shardings, is_leaf=is_shape)
    try:
        return ocp.StandardCheckpointer().restore((path / PARAMS_DIR).absolute(), target)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ModelCheckpointError(f"{path / PARAMS_DIR}: cannot restore parameters: {e}") from None


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    compute_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[GPT, ModelConfig, Tokenizer]:
    """(model, config, tokenizer); `dtype` overrides the parameter dtype (stored one if None)."""
    path = Path(path)
    stored = read_config(path)
    try:
        tokenizer = Tokenizer.load(path / "tokenizer.json")
    except TokenizerError as e:
        raise ModelCheckpointError(str(e)) from None
    if tokenizer.model_vocab_size != stored.vocab_size:
        raise ModelCheckpointError(
            f"{path / 'tokenizer.json'}: model_vocab_size {tokenizer.model_vocab_size} != "
            f"config vocab_size {stored.vocab_size}"
        )
    params = load_params(path, stored, mesh=mesh)
    config = stored.replace(param_dtype=dtype or stored.param_dtype,
                            dtype=compute_dtype or stored.dtype)
    model = from_params(config, params)
    if mesh is not None:
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.device_put(state, param_shardings(model, mesh)))
    return model, config, tokenizer


def read_source(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / "source.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
