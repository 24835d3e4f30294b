"""Our model checkpoint directory: weights (orbax) with the model config and token map beside them.

Layout of DST:
  config.json     ModelConfig.to_dict()
  tokenizer.json  Tokenizer.get_state() (the upstream schema)
  params/         orbax StandardCheckpointer of the parameters as a plain nested dict
  source.json     where the weights came from (import path, generation, payload dtype ...)

DST may be a remote URI (`gs://bucket/run/model`). Object stores cannot rename a directory,
so a remote DST is written to a local temp dir first and uploaded file by file with
`config.json` last: `is_model_checkpoint` (params/ + config.json) is true only once all
files are there. Locally the temp dir is renamed into place, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from mypt_jax.data.paths import absolute, as_path, is_remote
from mypt_jax.data.tokenizer import Tokenizer, TokenizerError
from mypt_jax.model.config import ConfigError, ModelConfig
from mypt_jax.model.param_table import param_shapes, param_shardings
from mypt_jax.model.transformer import GPT, from_params

PARAMS_DIR = "params"
RUN_MODEL_DIR = "model"  # a training run writes its final weights to <workdir>/model
# OCDBT holds a data file's encoded bytes in memory until the file is full: with the default
# (unbounded) target that is the whole compressed model (~0.7x the payload at 750M); 64 MiB
# files bound it (peak RSS of `convert import` at 750M: 2.01x -> 1.38x the payload).
_DATA_FILE_BYTES = 64 << 20


class ModelCheckpointError(ValueError):
    pass


def is_model_checkpoint(path: str | os.PathLike) -> bool:
    path = as_path(path)
    return (path / PARAMS_DIR).is_dir() and (path / "config.json").is_file()


def _pure_params(model_or_params: GPT | Mapping[str, Any]) -> dict[str, Any]:
    """Host numpy leaves (a jax array on the CPU is viewed, not copied)."""
    if isinstance(model_or_params, GPT):
        model_or_params = nnx.to_pure_dict(nnx.state(model_or_params, nnx.Param))
    return jax.tree.map(np.asarray, dict(model_or_params))


def _upload_tree(local: Path, dst: epath.Path, last: str | None) -> None:
    files = sorted(f for f in local.rglob("*") if f.is_file())
    files.sort(key=lambda f: f.relative_to(local).as_posix() == last)  # stable: `last` at the end
    for f in files:
        with f.open("rb") as src, (dst / f.relative_to(local).as_posix()).open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)


@contextlib.contextmanager
def staged_dir(dst: str | os.PathLike, *, last: str | None = None) -> Iterator[Path]:
    """A local temp dir that becomes DST when the block succeeds (nothing of DST otherwise).

    Local DST: a sibling temp dir renamed into place. Remote DST: uploaded file by file,
    `last` (a file name relative to DST, the one readers test for) after all others.
    """
    dst = as_path(dst)
    remote = is_remote(dst)
    if not remote:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=None if remote else Path(dst).parent))
    try:
        yield tmp
        if remote:
            try:
                _upload_tree(tmp, dst, last)
            except BaseException:
                with contextlib.suppress(Exception):  # leave no half-uploaded DST behind
                    dst.rmtree()
                raise
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _params_writer() -> ocp.Checkpointer:
    """A synchronous orbax writer of numpy leaves that writes them without copying them.

    Orbax's default numpy handler deep-copies every array before writing (a second copy of
    the whole model in RAM: the converter's peak); ours are not touched until it returns.
    The files are those StandardCheckpointer writes, so `load_params` restores them.
    """
    me = jax.process_index()  # its barriers must not wait for processes that do not save
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()))  # unused (leaves are numpy); silences a warning
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                          multiprocessing_options=alone)
    return ocp.Checkpointer(handler, multiprocessing_options=alone)


def save_model(
    path: str | os.PathLike,
    model_or_params: GPT | Mapping[str, Any],
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    source: Mapping[str, Any] | None = None,
) -> epath.Path:
    """Writes DST atomically (see the module doc); refuses to overwrite an existing DST.

    Arrays are stored in their own dtype; `config.param_dtype` must name it. Only the calling
    process writes (multi-host: gather the weights and call it on one process).
    """
    path = as_path(path)
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
    with staged_dir(path, last="config.json") as tmp:
        with _params_writer() as ckptr:
            ckptr.save((tmp / PARAMS_DIR).absolute(),
                       args=ocp.args.PyTreeSave(params, ocdbt_target_data_file_size=_DATA_FILE_BYTES))
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "source.json").write_text(json.dumps(dict(source or {}), indent=2), encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    return path


def read_config(path: str | os.PathLike) -> ModelConfig:
    file = as_path(path) / "config.json"
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
    path = as_path(path)
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
        return ocp.StandardCheckpointer().restore(absolute(path) / PARAMS_DIR, target)
    except Exception as e:  # orbax/tensorstore raise many types for missing or damaged bytes
        raise ModelCheckpointError(
            f"{path / PARAMS_DIR}: cannot restore parameters (the model directory is damaged or "
            f"incomplete): {cause_line(e)}") from None


def cause_line(exc: BaseException, limit: int = 300) -> str:
    """The innermost cause of a storage error, on one line: orbax wraps tensorstore's precise
    message ("OUT_OF_RANGE: ... value of size 100") in a generic one with a multi-line spec."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    compute_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[GPT, ModelConfig, Tokenizer]:
    """(model, config, tokenizer); `dtype` overrides the parameter dtype (stored one if None)."""
    path = as_path(path)
    stored = read_config(path)
    tokenizer = read_tokenizer(path)
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


def in_memory_model(params: Mapping[str, Any], config: ModelConfig, *, dtype: str | None = None,
                    compute_dtype: str | None = None) -> GPT:
    """The model `load_model` reads back from a model dir that `save_model` wrote from
    `params` (a run's weights on its devices), without the disk: host copies in their own
    dtype, then built as `load_model` builds it."""
    host = jax.tree.map(np.asarray, jax.device_get(params))
    return from_params(config.replace(param_dtype=dtype or config.param_dtype,
                                      dtype=compute_dtype or config.dtype), host)


def read_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """DST's tokenizer.json (local or remote)."""
    file = as_path(path) / "tokenizer.json"
    try:
        return Tokenizer.load(file)
    except TokenizerError as e:
        raise ModelCheckpointError(str(e)) from None


def read_source(path: str | os.PathLike) -> dict[str, Any]:
    file = as_path(path) / "source.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
