"""The model's config: architecture fields, our execution fields, and the upstream's defaults.

One frozen dataclass (`ModelConfig`) for both upstream generations (UPSTREAM_MODEL.md §1, §5),
checked on construction; `from_upstream`/`to_upstream` read and write the upstream's
config.json, `from_dict`/`to_dict` ours. Attention, the parameter table and the transformer
all import it, and it imports none of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

_LAYERNORM_EPS = 1e-5
_RMSNORM_EPS = 1e-6

POS_ENCODINGS = ("learned", "rope")
MLP_TYPES = ("gelu", "swiglu")
NORM_TYPES = ("layernorm", "rmsnorm")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTIONS = ("auto", "xla", "splash", "cudnn")  # the full-sequence kernels (attention.py)

# Architecture fields and the upstream GPTConfig defaults a config.json without them implies.
UPSTREAM_ARCH_DEFAULTS: dict[str, Any] = {
    "block_size": 256,
    "vocab_size": 50304,
    "n_embd": 384,
    "n_head": 6,
    "n_layer": 6,
    "dropout": 0.2,
    "bias": False,
    "tie_weights": False,
    "pos_encoding": "learned",
    "mlp_type": "gelu",
    "norm_type": "layernorm",
    "rope_theta": 10000.0,
    "rope_scale": 1.0,
}
# Upstream GPTConfig fields that only steer training or data loading, with their defaults;
# `to_upstream` writes them so every upstream version's loader finds its fields.
UPSTREAM_TRAINING_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "use_checkpoint": False,
    "device": "cpu",
    "use_loss_mask": False,
    "save_dtype": None,
    "batch_sampling_mode": "epoch",
    "pad_token_id": None,
    "episode_min_tokens": 2,
    "epoch_seed": 1337,
    "epoch_shuffle": True,
    "epoch_drop_last": True,
    "segment_position_reset": True,
    "neftune_alpha": 0.0,
}
_FIELD_TYPES = {
    "block_size": int, "vocab_size": int, "n_embd": int, "n_head": int, "n_layer": int,
    "dropout": float, "bias": bool, "tie_weights": bool, "pos_encoding": str, "mlp_type": str,
    "norm_type": str, "rope_theta": float, "rope_scale": float, "scan_layers": bool,
    "attention_prob_dropout": bool,
}


class ConfigError(ValueError):
    pass


def _attention_error(cfg: ModelConfig) -> str | None:
    """Why `attention` cannot run this config (message after "model config "), or None."""
    if cfg.attention not in ATTENTIONS:
        return f"attention={cfg.attention!r}: expected one of {ATTENTIONS}"
    if cfg.attention in ("splash", "cudnn") and cfg.dropout > 0 and cfg.attention_prob_dropout:
        return (
            f"attention={cfg.attention!r} has no attention-probability dropout, but dropout="
            f"{cfg.dropout} and attention_prob_dropout=true: set attention_prob_dropout=false "
            "(keeps the residual dropout sites), dropout=0, or attention='xla'"
        )
    if cfg.attention == "cudnn" and cfg.dtype == "float32":
        return "attention='cudnn' needs a bfloat16 or float16 compute dtype, got dtype='float32'"
    return None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    block_size: int = 256  # max context; rows of the learned position table
    vocab_size: int = 50304  # GPT-2's 50257 ids + special tags + padding to a multiple of 64
    n_embd: int = 384  # model width C
    n_head: int = 6  # attention heads; head_dim = n_embd // n_head
    n_layer: int = 6  # transformer blocks
    dropout: float = 0.2  # one rate for attention probs, after attn proj and after MLP down
    bias: bool = False  # biases on the qkv and attn proj linears only (MLP biases follow mlp_type)
    tie_weights: bool = True  # lm_head reuses the token embedding; its bias stays separate
    pos_encoding: str = "learned"  # "learned" absolute table | "rope" split-half rotary
    mlp_type: str = "gelu"  # "gelu": 4C MLP with biases | "swiglu": gated, no biases
    norm_type: str = "layernorm"  # "layernorm" (eps 1e-5, bias) | "rmsnorm" (eps 1e-6, no bias)
    rope_theta: float = 10000.0  # RoPE base frequency
    rope_scale: float = 1.0  # RoPE position interpolation: positions are divided by this
    param_dtype: str = "float32"  # ours: storage dtype of the parameters
    dtype: str = "float32"  # ours: compute dtype of the matmuls and of the returned logits
    remat: str = "none"  # ours: per-layer rematerialisation in training, "none" | "full" | "dots"
    scan_layers: bool = True  # ours: a lax.scan over the blocks in training; False unrolls it
    attention: str = "auto"  # ours: full-sequence kernel "auto" | "xla" | "splash" | "cudnn" (attention.py)
    attention_prob_dropout: bool = True  # ours: False drops only the attention-probability site

    def __post_init__(self):
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"model config {name}={value!r}: expected true or false")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"model config {name}={value!r}: expected an integer")
        for name in ("block_size", "vocab_size", "n_embd", "n_head", "n_layer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model config {name}={getattr(self, name)}: must be >= 1")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model config: n_embd {self.n_embd} is not divisible by n_head {self.n_head}"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"model config: rope needs an even head_dim, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model config dropout={self.dropout}: expected 0 <= dropout < 1")
        if self.rope_scale <= 0 or self.rope_theta <= 0:
            raise ConfigError("model config: rope_theta and rope_scale must be > 0")
        for name, allowed in (
            ("pos_encoding", POS_ENCODINGS), ("mlp_type", MLP_TYPES), ("norm_type", NORM_TYPES),
            ("param_dtype", DTYPES), ("dtype", DTYPES), ("remat", REMAT_POLICIES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model config {name}={getattr(self, name)!r}: expected one of {allowed}"
                )
        if error := _attention_error(self):
            raise ConfigError(f"model config {error}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_type == "gelu":
            return 4 * self.n_embd
        # Upstream's SwiGLU rule: int(8C/3) rounded up to a multiple of 64 (C=1280 -> 3456).
        return (int(8 * self.n_embd / 3) + 63) // 64 * 64

    @property
    def norm_eps(self) -> float:
        return _LAYERNORM_EPS if self.norm_type == "layernorm" else _RMSNORM_EPS

    @property
    def generation(self) -> str:
        """"seed" for the seed-era architecture, "head" for the LLaMA-style one, else "mixed"."""
        arch = (self.pos_encoding, self.mlp_type, self.norm_type)
        if arch == ("learned", "gelu", "layernorm"):
            return "seed"
        return "head" if arch == ("rope", "swiglu", "rmsnorm") else "mixed"

    # ----- upstream config.json -----
    @classmethod
    def from_upstream(cls, cfg: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
        """Architecture fields of an upstream config.json; absent ones take upstream defaults."""
        values = {}
        for name, default in UPSTREAM_ARCH_DEFAULTS.items():
            value = cfg.get(name, default)
            if _FIELD_TYPES[name] is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[name] = value
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_upstream(self, training_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every upstream GPTConfig field (seed and newer); training fields default or given."""
        out = dict(UPSTREAM_TRAINING_DEFAULTS)
        for name, value in (training_fields or {}).items():
            if name in UPSTREAM_TRAINING_DEFAULTS:
                out[name] = value
        out.update({name: getattr(self, name) for name in UPSTREAM_ARCH_DEFAULTS})
        out["device"] = "cpu"  # upstream GPT.load moves the model to this device
        return out

    # ----- our checkpoints -----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model config") -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown model config fields {unknown}")
        try:
            return cls(**dict(d))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def diff(self, other: ModelConfig) -> list[str]:
        """Architecture differences (fields that change parameter shapes or numerics)."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in UPSTREAM_ARCH_DEFAULTS
            if name != "dropout" and getattr(self, name) != getattr(other, name)
        ]
