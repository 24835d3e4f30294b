"""The upstream state_dict and our parameter tree, key by key, in both directions.

`KEY_TABLE` is the only place the upstream parameter names appear: which of our parameters
each key is, whether it is a torch Linear weight (transposed), and for which architectures
it exists. Shapes, dtypes and the tied head are checked on the way in and out.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.interop import torch_pickle
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import param_shapes

PAYLOAD_DTYPES = {"fp32": np.dtype(np.float32), "bf16": np.dtype(ml_dtypes.bfloat16),
                  "fp16": np.dtype(np.float16)}
_DTYPE_NAMES = {v: k for k, v in PAYLOAD_DTYPES.items()}


class UpstreamError(ValueError):
    """An upstream checkpoint that is inconsistent or incomplete (message names file and key)."""


# ----------------------------------------------------------------------------------------
# The key table (single source of truth for upstream parameter names)
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KeySpec:
    upstream: str  # state_dict key; "{i}" = layer index
    ours: str  # our parameter: top-level name or "blocks/<name>" (stacked on a layer axis)
    linear: bool  # torch Linear weight (out, in): transposed to our (in, out) kernel
    when: Callable[[ModelConfig], bool]  # present for this architecture


def _always(c: ModelConfig) -> bool:
    return True


KEY_TABLE: tuple[KeySpec, ...] = (
    KeySpec("token_embedding_table.weight", "wte", False, _always),
    KeySpec("position_embedding_table.weight", "wpe", False, lambda c: c.pos_encoding == "learned"),
    KeySpec("blocks.{i}.sa.qkv.weight", "blocks/qkv_kernel", True, _always),
    KeySpec("blocks.{i}.sa.qkv.bias", "blocks/qkv_bias", False, lambda c: c.bias),
    KeySpec("blocks.{i}.sa.proj.weight", "blocks/proj_kernel", True, _always),
    KeySpec("blocks.{i}.sa.proj.bias", "blocks/proj_bias", False, lambda c: c.bias),
    KeySpec("blocks.{i}.fwd.net.0.weight", "blocks/fc_kernel", True, lambda c: c.mlp_type == "gelu"),
    KeySpec("blocks.{i}.fwd.net.0.bias", "blocks/fc_bias", False, lambda c: c.mlp_type == "gelu"),
    KeySpec("blocks.{i}.fwd.net.2.weight", "blocks/out_kernel", True, lambda c: c.mlp_type == "gelu"),
    KeySpec("blocks.{i}.fwd.net.2.bias", "blocks/out_bias", False, lambda c: c.mlp_type == "gelu"),
    KeySpec("blocks.{i}.fwd.w_gate.weight", "blocks/gate_kernel", True, lambda c: c.mlp_type == "swiglu"),
    KeySpec("blocks.{i}.fwd.w_up.weight", "blocks/up_kernel", True, lambda c: c.mlp_type == "swiglu"),
    KeySpec("blocks.{i}.fwd.w_down.weight", "blocks/down_kernel", True, lambda c: c.mlp_type == "swiglu"),
    KeySpec("blocks.{i}.ln1.weight", "blocks/ln1_scale", False, _always),
    KeySpec("blocks.{i}.ln1.bias", "blocks/ln1_bias", False, lambda c: c.norm_type == "layernorm"),
    KeySpec("blocks.{i}.ln2.weight", "blocks/ln2_scale", False, _always),
    KeySpec("blocks.{i}.ln2.bias", "blocks/ln2_bias", False, lambda c: c.norm_type == "layernorm"),
    KeySpec("ln_f.weight", "ln_f_scale", False, _always),
    KeySpec("ln_f.bias", "ln_f_bias", False, lambda c: c.norm_type == "layernorm"),
    # Tied: the same matrix as the token embedding (upstream's state_dict still lists it).
    KeySpec("lm_head.weight", "lm_head_kernel", False, _always),
    KeySpec("lm_head.bias", "lm_head_bias", False, _always),
)
TIED_KEY = "lm_head.weight"
EMBEDDING_KEY = "token_embedding_table.weight"


def expected_keys(cfg: ModelConfig) -> list[str]:
    """The upstream state_dict keys of this architecture, in upstream order."""
    top = [s for s in KEY_TABLE if "{i}" not in s.upstream and s.when(cfg)]
    per_layer = [s for s in KEY_TABLE if "{i}" in s.upstream and s.when(cfg)]
    keys = [top[0].upstream] + ([top[1].upstream] if top[1].ours == "wpe" else [])
    keys += [s.upstream.format(i=i) for i in range(cfg.n_layer) for s in per_layer]
    keys += [s.upstream for s in top if s.ours not in ("wte", "wpe")]
    return keys


def _upstream_shape(spec: KeySpec, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = ours_shape[1:] if spec.ours.startswith("blocks/") else ours_shape
    return tuple(reversed(shape)) if spec.linear else tuple(shape)


def upstream_shapes(cfg: ModelConfig) -> OrderedDict[str, tuple[int, ...]]:
    """Every upstream state_dict key of this architecture with its shape, in upstream order."""
    shapes = param_shapes(cfg)
    by_key = {}
    for spec in KEY_TABLE:
        if not spec.when(cfg):
            continue
        ours = "wte" if (spec.upstream == TIED_KEY and cfg.tie_weights) else spec.ours
        shape = _upstream_shape(spec, _get_path(shapes, ours))
        for i in range(cfg.n_layer) if "{i}" in spec.upstream else [None]:
            by_key[spec.upstream.format(i=i)] = shape
    return OrderedDict((k, by_key[k]) for k in expected_keys(cfg))


# ----------------------------------------------------------------------------------------
# Architecture detection and checks
# ----------------------------------------------------------------------------------------

def architecture_from_keys(keys: list[str]) -> dict[str, Any]:
    """What the state_dict key set itself says about the architecture."""
    ks = set(keys)
    layers = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    found: dict[str, Any] = {"n_layer": max(layers) + 1 if layers else 0}
    found["pos_encoding"] = "learned" if "position_embedding_table.weight" in ks else "rope"
    if any(".fwd.w_gate." in k for k in ks):
        found["mlp_type"] = "swiglu"
    elif any(".fwd.net.0." in k for k in ks):
        found["mlp_type"] = "gelu"
    found["norm_type"] = "layernorm" if "ln_f.bias" in ks else "rmsnorm"
    found["bias"] = any(k.endswith(".sa.qkv.bias") for k in ks)
    return found


def check_config_against_keys(cfg: ModelConfig, keys: list[str], source: str) -> None:
    found = architecture_from_keys(keys)
    problems = [
        f"{name}: config says {getattr(cfg, name)!r}, weights say {value!r}"
        for name, value in found.items() if getattr(cfg, name) != value
    ]
    if problems:
        raise UpstreamError(
            f"{source}: the config disagrees with the weights ({'; '.join(problems)})"
        )


def check_tokenizer(tokenizer: Tokenizer, cfg: ModelConfig, source: str) -> None:
    if tokenizer.model_vocab_size != cfg.vocab_size:
        raise UpstreamError(
            f"{source}: tokenizer model_vocab_size {tokenizer.model_vocab_size} != config "
            f"vocab_size {cfg.vocab_size}"
        )
    for name, token_id in tokenizer.ids_by_name.items():
        if token_id >= cfg.vocab_size:
            raise UpstreamError(
                f"{source}: special token {name!r} has id {token_id}, outside the model's "
                f"vocab_size {cfg.vocab_size}"
            )


# ----------------------------------------------------------------------------------------
# state_dict <-> our parameters
# ----------------------------------------------------------------------------------------

def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get_path(tree: Mapping, path: str) -> Any:
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _float_dtype(state_dict: Mapping[str, Any], source: str) -> np.dtype:
    dtypes = {np.dtype(v.dtype) for v in state_dict.values()}
    bad = [d for d in dtypes if d not in _DTYPE_NAMES]
    if bad:
        key = next(k for k, v in state_dict.items() if np.dtype(v.dtype) in bad)
        raise UpstreamError(f"{source}: key {key!r} has dtype {bad[0]}, expected fp32/bf16/fp16")
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)


@dataclasses.dataclass
class ImportInfo:
    payload_dtype: str  # "fp32" | "bf16" | "fp16" (or "mixed")
    tied_storage: str  # "shared" | "twice" | "absent" | "untied"
    notes: list[str]


def params_from_state_dict(
    state_dict: Mapping[str, Any], cfg: ModelConfig, source: str
) -> tuple[dict[str, Any], ImportInfo]:
    """Our nested params (numpy, in the payload's dtype) from an upstream state_dict.

    Tensors may be lazy `TensorRef`s: each is read once and written into its slot of the
    stacked arrays, so peak memory is about one copy of the parameters.
    """
    keys = list(state_dict)
    check_config_against_keys(cfg, keys, source)
    expected = expected_keys(cfg)
    notes: list[str] = []
    present = set(keys)
    missing = [k for k in expected if k not in present]
    tied_storage = "untied"
    if cfg.tie_weights:
        if TIED_KEY in missing:
            missing.remove(TIED_KEY)
            tied_storage = "absent"
    if missing:
        raise UpstreamError(f"{source}: missing key {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [k for k in keys if k not in set(expected)]
    if extra:
        raise UpstreamError(f"{source}: unexpected key {extra[0]!r}"
                            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                            + " for this architecture")
    dtype = _float_dtype(state_dict, source)
    for name, want in upstream_shapes(cfg).items():
        if name in state_dict and tuple(state_dict[name].shape) != want:
            raise UpstreamError(
                f"{source}: key {name!r} has shape {tuple(state_dict[name].shape)}, the config "
                f"implies {want}"
            )
    shapes = param_shapes(cfg)

    params: dict[str, Any] = {}
    for spec in KEY_TABLE:
        if not spec.when(cfg) or (spec.upstream == TIED_KEY and cfg.tie_weights):
            continue
        shape = _get_path(shapes, spec.ours)
        if "{i}" in spec.upstream:
            out = np.empty(shape, dtype)
            for i in range(cfg.n_layer):
                t = np.asarray(state_dict[spec.upstream.format(i=i)]).astype(dtype, copy=False)
                out[i] = t.T if spec.linear else t
                del t
        else:
            t = np.asarray(state_dict[spec.upstream]).astype(dtype, copy=False)
            out = t.T.copy() if spec.linear else t
        _set_path(params, spec.ours, out)

    if cfg.tie_weights and tied_storage != "absent":
        emb, head = state_dict[EMBEDDING_KEY], state_dict[TIED_KEY]
        if isinstance(emb, torch_pickle.TensorRef) and isinstance(head, torch_pickle.TensorRef):
            same = emb.same_storage(head)
        else:
            same = emb is head
        if same:
            tied_storage = "shared"
        else:
            tied_storage = "twice"
            head_arr = np.asarray(head).astype(dtype, copy=False)
            if not np.array_equal(head_arr.view(np.uint8), params["wte"].view(np.uint8)):
                # Upstream's strict load copies both keys into the one shared matrix and
                # lm_head.weight comes last, so its value is what the upstream model holds.
                notes.append(f"{TIED_KEY} differs from {EMBEDDING_KEY} although tie_weights is "
                             f"true; using {TIED_KEY} for both, as upstream GPT.load does")
                params["wte"] = head_arr
            del head_arr
    name = _DTYPE_NAMES[dtype] if len({np.dtype(v.dtype) for v in state_dict.values()}) == 1 else "mixed"
    return params, ImportInfo(name, tied_storage, notes)


class _CastView:
    """A lazily cast (and transposed) array for the torch writer: materialised when written."""

    def __init__(self, get: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: np.dtype):
        self._get, self.shape, self.dtype = get, shape, dtype

    def __array__(self, dtype=None, copy=None):
        arr = np.ascontiguousarray(np.asarray(self._get()).astype(self.dtype, copy=False))
        return arr if dtype is None else arr.astype(dtype)


def state_dict_from_params(
    params: Mapping[str, Any], cfg: ModelConfig, dtype: str = "fp32"
) -> OrderedDict[str, Any]:
    """The upstream state_dict (lazy arrays, upstream key order). Tied: one shared tensor."""
    target = PAYLOAD_DTYPES[dtype]
    by_key = {}
    for spec in KEY_TABLE:
        if not spec.when(cfg) or (spec.upstream == TIED_KEY and cfg.tie_weights):
            continue
        arr = _get_path(params, spec.ours)
        layers = range(cfg.n_layer) if "{i}" in spec.upstream else [None]
        for i in layers:
            def get(arr=arr, i=i, linear=spec.linear):
                a = np.asarray(arr[i]) if i is not None else np.asarray(arr)
                return a.T if linear else a

            shape = tuple(arr.shape[1:] if i is not None else arr.shape)
            shape = tuple(reversed(shape)) if spec.linear else shape
            by_key[spec.upstream.format(i=i)] = _CastView(get, shape, target)
    if cfg.tie_weights:
        by_key[TIED_KEY] = by_key[EMBEDDING_KEY]
    return OrderedDict((k, by_key[k]) for k in expected_keys(cfg))


