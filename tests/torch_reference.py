"""An independent PyTorch implementation of both upstream MyPT generations, written from
UPSTREAM_MODEL.md (§1 seed era, §5 LLaMA-style options), plus writers of upstream-format
checkpoint directories. Tests use it as the oracle our JAX model and converter must match.

Module names are chosen so `state_dict()` keys and their order equal the upstream's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ARCH_DEFAULTS = {
    "block_size": 256, "vocab_size": 50304, "n_embd": 384, "n_head": 6, "n_layer": 6,
    "dropout": 0.2, "bias": False, "tie_weights": False, "pos_encoding": "learned",
    "mlp_type": "gelu", "norm_type": "layernorm", "rope_theta": 10000.0, "rope_scale": 1.0,
}
SEED_TRAINING_FIELDS = {
    "batch_size": 32, "use_checkpoint": False, "device": "cpu", "use_loss_mask": False,
    "save_dtype": None, "batch_sampling_mode": "epoch", "pad_token_id": None,
    "episode_min_tokens": 2, "epoch_seed": 1337, "epoch_shuffle": True, "epoch_drop_last": True,
}
SEED_ARCH_FIELDS = ("block_size", "vocab_size", "n_embd", "n_head", "n_layer", "dropout", "bias",
                    "tie_weights")


class Cfg:
    def __init__(self, **kw):
        unknown = set(kw) - set(ARCH_DEFAULTS) - set(SEED_TRAINING_FIELDS) - {
            "segment_position_reset", "neftune_alpha"}
        assert not unknown, unknown
        for k, v in {**ARCH_DEFAULTS, **kw}.items():
            setattr(self, k, v)
        self.raw = kw

    def config_json(self, generation: str) -> dict:
        """The config.json an upstream of that generation would write for this model."""
        out = {k: getattr(self, k) for k in SEED_ARCH_FIELDS}
        out.update(SEED_TRAINING_FIELDS)
        if generation == "head":
            for k in ("pos_encoding", "mlp_type", "norm_type", "rope_theta", "rope_scale"):
                out[k] = getattr(self, k)
            out.update(segment_position_reset=True, neftune_alpha=0.0)
        return out


class RMSNormRef(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def make_norm(cfg: Cfg) -> nn.Module:
    return RMSNormRef(cfg.n_embd) if cfg.norm_type == "rmsnorm" else nn.LayerNorm(cfg.n_embd, eps=1e-5)


def rope_cos_sin(head_dim: int, positions: torch.Tensor, theta: float, scale: float):
    i = torch.arange(0, head_dim, 2, dtype=torch.float32)
    inv = 1.0 / (theta ** (i / head_dim))
    t = positions.to(torch.float32) / scale
    ang = t[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def rotate(x, cos, sin):
    # x (B, H, T, D); cos/sin (T, D/2): first half paired with second half
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x, positions):
        B, T, C = x.shape
        H = self.cfg.n_head
        D = C // H
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        if self.cfg.pos_encoding == "rope":
            cos, sin = rope_cos_sin(D, positions, self.cfg.rope_theta, self.cfg.rope_scale)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class GeluMLP(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        c = cfg.n_embd
        self.net = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class GatedMLP(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        c = cfg.n_embd
        hidden = -(-int(8 * c / 3) // 64) * 64
        self.w_gate = nn.Linear(c, hidden, bias=False)
        self.w_up = nn.Linear(c, hidden, bias=False)
        self.w_down = nn.Linear(hidden, c, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        # registration order sa, fwd, ln1, ln2 fixes the upstream state_dict order
        self.sa = SelfAttention(cfg)
        self.fwd = GatedMLP(cfg) if cfg.mlp_type == "swiglu" else GeluMLP(cfg)
        self.ln1 = make_norm(cfg)
        self.ln2 = make_norm(cfg)

    def forward(self, x, positions):
        x = x + self.sa(self.ln1(x), positions)
        return x + self.fwd(self.ln2(x))


class TorchGPT(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        self.cfg = cfg
        self.token_embedding_table = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.position_embedding_table = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size)
        if cfg.tie_weights:
            self.lm_head.weight = self.token_embedding_table.weight

    def randomize_(self, seed: int) -> TorchGPT:
        """Distinct random values everywhere (norm weights/biases too), so any mix-up shows."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                noise = torch.randn(p.shape, generator=g)
                if name.endswith("weight") and p.dim() == 1:
                    p.copy_(1.0 + 0.1 * noise)
                elif p.dim() == 1:
                    p.copy_(0.05 * noise)
                else:
                    p.copy_(0.05 * noise)
        return self

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        pos = torch.arange(T)
        x = self.token_embedding_table(idx)
        if self.cfg.pos_encoding == "learned":
            x = x + self.position_embedding_table(pos)
        for blk in self.blocks:
            x = blk(x, pos)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def greedy(self, ids: list[int], n: int) -> list[int]:
        out = list(ids)
        for _ in range(n):
            logits = self(torch.tensor([out[-self.cfg.block_size:]]))
            out.append(int(logits[0, -1].argmax()))
        return out[len(ids):]


_SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def write_upstream_dir(
    model: TorchGPT,
    path: Path,
    *,
    generation: str,
    tokenizer_state: dict,
    save_dtype: str | None = None,
    payload: str = "dict",
    tied_twice: bool | None = None,
) -> Path:
    """An upstream checkpoint directory as the upstream bundle writer lays it out (UPSTREAM_MODEL §2).

    With a cast (`save_dtype`) each key is cast on its own, so tied weights are stored twice,
    as upstream does; `tied_twice` forces either layout.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    if save_dtype is not None:
        dt = _SAVE_DTYPES[save_dtype]
        sd = {k: v.detach().to(dt) for k, v in sd.items()}
        if tied_twice is False and model.cfg.tie_weights:
            sd["lm_head.weight"] = sd["token_embedding_table.weight"]
    elif tied_twice and model.cfg.tie_weights:
        sd = dict(sd)
        sd["lm_head.weight"] = sd["lm_head.weight"].clone()
    if payload == "dict":
        obj = {"state_dict": sd, "checkpoint_dtype": save_dtype, "model_dtype": "float32"}
    else:
        obj = sd
    torch.save(obj, path / "model.pt")
    cfg = model.cfg.config_json(generation)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_state, indent=2))
    (path / "training_state.json").write_text(json.dumps({"step": 7, "model_dtype_at_save": "float32"}))
    return path


def load_upstream_dir(path: Path) -> TorchGPT:
    """Reads an upstream directory the way upstream GPT.load does on CPU (strict, lm_head last)."""
    path = Path(path)
    cfg_json = json.loads((path / "config.json").read_text())
    cfg = Cfg(**{k: v for k, v in cfg_json.items() if k in ARCH_DEFAULTS})
    assert cfg_json.get("device") == "cpu", "export must say device cpu"
    model = TorchGPT(cfg)
    obj = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    sd = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    model.load_state_dict(sd, strict=True)
    return model.eval()


def freeze_(model: TorchGPT, layers: int, embeddings: bool) -> TorchGPT:
    """requires_grad=False where the upstream's freezing puts it (its core/checkpoint.py):
    every parameter of the first `layers` blocks, and with `embeddings` the token table (so a
    tied lm_head weight) and the position table. The upstream reads the position table
    unconditionally and fails on a RoPE model; here a model without one freezes the rest."""
    frozen = [*model.blocks[:layers].parameters()]
    if embeddings:
        frozen += [*model.token_embedding_table.parameters()]
        if hasattr(model, "position_embedding_table"):
            frozen += [*model.position_embedding_table.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    return model


def upstream_adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                   eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the parameters that require a gradient, in the upstream's two groups: no
    decay for 1-D tensors and names holding "embedding" or "ln", decay for the rest."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.dim() == 1 or "embedding" in name.lower() or "ln" in name.lower()
        (no_decay if plain else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps)


def upstream_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """The newer upstream's per-row positions for segment ids (UPSTREAM: GPT._compute_segment_
    positions): 0 at column 0 and wherever the id changes from the column before."""
    B, T = segment_ids.shape
    col = torch.arange(T).expand(B, T)
    change = torch.ones(B, T, dtype=torch.bool)
    change[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start = torch.cummax(torch.where(change, col, torch.zeros_like(col)), dim=1).values
    return col - start


def forward_segments(model: TorchGPT, idx: torch.Tensor, segment_ids: torch.Tensor | None):
    """Logits as the newer upstream computes them for rows with segment ids: a query sees the
    keys at or before it with the same id (padding, id 0, sees padding), and positions restart
    per segment. Without ids, the plain causal forward."""
    if segment_ids is None:
        return model(idx)
    cfg = model.cfg
    B, T = idx.shape
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    pos = upstream_positions(segment_ids)
    allowed = ((segment_ids[:, :, None] == segment_ids[:, None, :])
               & torch.ones(T, T, dtype=torch.bool).tril())[:, None]
    x = model.token_embedding_table(idx)
    if cfg.pos_encoding == "learned":
        x = x + model.position_embedding_table(pos)
    else:
        cos, sin = rope_cos_sin(D, pos.reshape(-1), cfg.rope_theta, cfg.rope_scale)
        cos, sin = (t.reshape(B, 1, T, D // 2) for t in (cos, sin))
    for blk in model.blocks:
        sa, h = blk.sa, blk.ln1(x)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in sa.qkv(h).split(cfg.n_embd, dim=2))
        if cfg.pos_encoding == "rope":
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
        x = x + sa.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, cfg.n_embd))
        x = x + blk.fwd(blk.ln2(x))
    return model.lm_head(model.ln_f(x))


def upstream_weighted_loss(model: TorchGPT, x, y, weights, segment_ids=None) -> torch.Tensor:
    """The newer upstream's loss with a float mask: sum(w * CE) / max(sum(w), 1) over the batch."""
    logits = forward_segments(model, x, segment_ids)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    w = weights.reshape(-1).to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp_min(1.0)
