"""Model FLOPs of a train step, an eval pass and a decoded token (the formulas of
`mypt_jax/preflight/chips.py`'s docstring): used by the preflight, the benchmarks and a run's
shape plan.
"""

from __future__ import annotations

from typing import Any


def body_matmul_params(n_layer: int, n_embd: int, mlp_hidden: int, gated: bool = False) -> int:
    """Weights of the block matmuls (qkv, attention proj, MLP), all layers."""
    mlp = (3 if gated else 2) * n_embd * mlp_hidden
    return n_layer * (4 * n_embd * n_embd + mlp)


def model_shape(cfg: Any) -> dict[str, int]:
    """The numbers the formulas need, from a `ModelConfig`."""
    return {"L": cfg.n_layer, "C": cfg.n_embd, "V": cfg.vocab_size,
            "N_body": body_matmul_params(cfg.n_layer, cfg.n_embd, cfg.mlp_hidden,
                                         cfg.mlp_type == "swiglu")}


def train_step_flops(cfg: Any, batch: int, seq: int, projected: int | None = None) -> dict[str, float]:
    """Model FLOPs of one train step on `batch` rows of `seq` tokens (see `preflight/chips.py`).

    `projected`: positions per row that go through the vocabulary projection (default: all).
    """
    s = model_shape(cfg)
    P = seq if projected is None else projected
    tokens = batch * seq
    body = 6 * s["N_body"] * tokens
    head = 6 * s["V"] * s["C"] * batch * P
    attention = 12 * s["L"] * s["C"] * seq * tokens
    return {"total": body + head + attention, "body": body, "head": head,
            "attention": attention, "attention_causal": attention / 2}


def forward_flops(cfg: Any, batch: int, seq: int, projected: int | None = None) -> float:
    """Model FLOPs of a forward pass (the eval step): a third of the training step's."""
    return train_step_flops(cfg, batch, seq, projected)["total"] / 3


def decode_flops_per_token(cfg: Any, cached: int) -> float:
    s = model_shape(cfg)
    return 2 * (s["N_body"] + s["V"] * s["C"]) + 4 * s["L"] * s["C"] * cached


def remat_flops(train_flops: dict[str, float], remat: str) -> float:
    """FLOPs a train step executes: remat "full" recomputes the blocks' forward pass; "dots"
    keeps the weight matmuls' outputs and recomputes attention (its matmuls carry batch dims)."""
    if remat == "full":
        return train_flops["total"] + (train_flops["body"] + train_flops["attention"]) / 3
    if remat == "dots":
        return train_flops["total"] + train_flops["attention"] / 3
    return train_flops["total"]
