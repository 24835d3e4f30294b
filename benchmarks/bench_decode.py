"""Decoding speed: our jitted KV-cache loop against an upstream-style PyTorch eager loop.

For a tiny (2 layers, 64 wide, 4 heads) and a small (4 layers, 256 wide, 8 heads) model with
vocab 50304 (seed architecture, tied weights, default init), measures greedy generation of
128 new tokens after a 16-token prompt: tokens/s at batch 1 and 8 and time to first token,
for `decode.generate_tokens` and, if torch is installed, for a PyTorch loop shaped like the
upstream `GPT.generate` (preallocated cache, one Python-level forward per token, `.item()`
per token). Also measures memory bandwidth with numpy (copy and sum of 256 MiB) so the
small model's bytes/s can be read against it. No early stops: no stop ids, no repeat guard.
`--scan_layers` also times the scanned layer loop (`jax_scanned`, `scan_layers=True`) next to
the default form (`jax`: unrolled on CPU), interleaved with it.

    python benchmarks/bench_decode.py [--new_tokens 128] [--repeats 4] [--torch_threads N]
                                      [--scan_layers]

Prints one JSON object. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from mypt_jax.decoding import decode  # noqa: E402
from mypt_jax.model import GPT, ModelConfig  # noqa: E402

MODELS = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4),
    "small": dict(n_layer=4, n_embd=256, n_head=8),
}
VOCAB, BLOCK, PROMPT_LEN = 50304, 256, 16


def memory_bandwidth(repeats: int) -> dict[str, float]:
    a = np.ones(256 * 2**20 // 8, np.float64)
    b = np.empty_like(a)
    copy_s = min(common.timed(lambda: np.copyto(b, a)) for _ in range(repeats + 2))
    sum_s = min(common.timed(lambda: a.sum()) for _ in range(repeats + 2))
    # numpy runs these on one thread: a one-core figure, like a single-threaded gemv.
    return {"one_thread_copy_GBps": 2 * a.nbytes / copy_s / 1e9,
            "one_thread_sum_GBps": a.nbytes / sum_s / 1e9}


def param_bytes(model: GPT) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------------

def jax_runners(model: GPT, prompts: np.ndarray, new_tokens: int,
                scan_layers: bool | None = None) -> dict:
    def run(batch: int, n: int):
        return decode.generate_tokens(
            model, prompts[:batch].tolist(), max_new_tokens=n, stop_ids=[], repeat_guard=False,
            scan_layers=scan_layers)

    return {"b1": lambda: run(1, new_tokens), "b8": lambda: run(8, new_tokens),
            "ttft": lambda: run(1, 1)}


# ----------------------------------------------------------------------------------------
# PyTorch: the upstream generate loop's shape, written for this benchmark
# ----------------------------------------------------------------------------------------

def torch_model(cfg: ModelConfig, jax_model: GPT):
    import torch
    import torch.nn.functional as F
    from torch import nn

    C, H = cfg.n_embd, cfg.n_head

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv = nn.Linear(C, 3 * C, bias=False)
            self.proj = nn.Linear(C, C, bias=False)
            self.fc, self.out = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x, cache, pos):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            k_cache, v_cache = cache
            k_cache[:, :, pos:pos + T] = k
            v_cache[:, :, pos:pos + T] = v
            y = F.scaled_dot_product_attention(
                q, k_cache[:, :, :pos + T], v_cache[:, :, :pos + T], is_causal=T > 1)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, C)
            self.wpe = nn.Embedding(cfg.block_size, C)
            self.blocks = nn.ModuleList([Block() for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(C)
            self.lm_head = nn.Linear(C, cfg.vocab_size)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx, caches, pos):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T))
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block(x, cache, pos)
            return self.lm_head(self.ln_f(x))

    model = Model().eval()
    # Same weights as the JAX model, so both do identical arithmetic (values do not affect speed).
    p = jax.tree.map(np.array, nnx.state(jax_model, nnx.Param).to_pure_dict())  # writable
    with torch.no_grad():
        model.wte.weight.copy_(torch.from_numpy(p["wte"]))
        model.wpe.weight.copy_(torch.from_numpy(p["wpe"]))
        model.lm_head.bias.copy_(torch.from_numpy(p["lm_head_bias"]))
        for i, blk in enumerate(model.blocks):
            b = {k: torch.from_numpy(v[i]) for k, v in p["blocks"].items()}
            blk.qkv.weight.copy_(b["qkv_kernel"].T)
            blk.proj.weight.copy_(b["proj_kernel"].T)
            blk.fc.weight.copy_(b["fc_kernel"].T)
            blk.fc.bias.copy_(b["fc_bias"])
            blk.out.weight.copy_(b["out_kernel"].T)
            blk.out.bias.copy_(b["out_bias"])
    return model


def torch_runners(cfg: ModelConfig, jax_model: GPT, prompts: np.ndarray, new_tokens: int) -> dict:
    import torch

    model = torch_model(cfg, jax_model)
    hs = cfg.n_embd // cfg.n_head

    @torch.inference_mode()
    def generate(batch: int, n: int) -> list[list[int]]:
        idx = torch.from_numpy(prompts[:batch].astype(np.int64))
        caches = [(torch.empty(batch, cfg.n_head, cfg.block_size, hs),
                   torch.empty(batch, cfg.n_head, cfg.block_size, hs)) for _ in range(cfg.n_layer)]
        logits = model(idx, caches, 0)[:, -1, :]
        pos = idx.shape[1]
        out = [idx[b].tolist() for b in range(batch)]
        for _ in range(n):
            nxt = torch.argmax(logits, dim=-1, keepdim=True)
            for b in range(batch):  # upstream: int(idx_next.item()) and list bookkeeping per token
                out[b].append(int(nxt[b, 0].item()))
            logits = model(nxt, caches, pos)[:, -1, :]
            pos += 1
        return out

    return {"b1": lambda: generate(1, new_tokens), "b8": lambda: generate(8, new_tokens),
            "ttft": lambda: generate(1, 1)}


def measure(runners: dict[str, dict], new_tokens: int, repeats: int) -> dict:
    """Best-of-`repeats` times, all implementations interleaved round by round
    (`common.interleaved`) so that load from other processes hits all of them alike."""
    flat = {(impl, name): fn for impl, fns in runners.items() for name, fn in fns.items()}
    times = common.interleaved({f"{i}/{n}": fn for (i, n), fn in flat.items()}, repeats)
    out: dict = {impl: {} for impl in runners}
    for impl, fns in runners.items():
        for name in fns:
            out[impl][f"first_run_s_{name}"] = times[f"{impl}/{name}"]["first_s"]
        for batch in (1, 8):
            seconds = times[f"{impl}/b{batch}"]["best_s"]
            out[impl][f"tokens_per_s_b{batch}"] = batch * new_tokens / seconds
            out[impl][f"ms_per_step_b{batch}"] = 1e3 * seconds / new_tokens
            median = times[f"{impl}/b{batch}"]["median_s"]
            out[impl][f"tokens_per_s_b{batch}_median"] = batch * new_tokens / median
        out[impl]["time_to_first_token_ms_b1"] = 1e3 * times[f"{impl}/ttft"]["best_s"]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--scan_layers", action="store_true",
                        help="also time the scanned layer loop (jax_scanned) beside jax")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.torch_threads and common.have_torch():
        import torch

        torch.set_num_threads(args.torch_threads)

    prompts = np.random.default_rng(0).integers(0, 50257, (8, PROMPT_LEN)).astype(np.int32)
    report: dict = {
        "benchmark": "decode", "command": " ".join(sys.argv),
        "machine": common.machine_info(),
        "memory_bandwidth": memory_bandwidth(args.repeats),
        "setup": {"vocab": VOCAB, "block_size": BLOCK, "prompt_len": PROMPT_LEN,
                  "new_tokens": args.new_tokens, "greedy": True, "repeats": args.repeats},
        "models": {},
    }
    have_torch = common.have_torch()
    for name in args.models.split(","):
        arch = MODELS[name]
        cfg = ModelConfig(block_size=BLOCK, vocab_size=VOCAB, dropout=0.0, **arch)
        model = GPT(cfg, rngs=nnx.Rngs(0))
        runners = {"jax": jax_runners(model, prompts, args.new_tokens)}
        if args.scan_layers:
            runners["jax_scanned"] = jax_runners(model, prompts, args.new_tokens, scan_layers=True)
        if have_torch:
            runners["torch_eager"] = torch_runners(cfg, model, prompts, args.new_tokens)
        entry: dict = {"config": arch, "param_bytes": param_bytes(model),
                       "model_flops_per_token": common.decode_flops_per_token(
                           cfg, PROMPT_LEN + args.new_tokens // 2)}
        entry.update(measure(runners, args.new_tokens, args.repeats))
        # Every step reads all weights once (the tied 50304-row matrix dominates); the
        # embedding-row and KV-cache reads are small next to it.
        for impl in ("jax", "jax_scanned") if args.scan_layers else ("jax",):
            entry[impl]["weight_GBps_b1"] = (
                entry["param_bytes"] * entry[impl]["tokens_per_s_b1"] / 1e9)
        if args.scan_layers:
            j, s = entry["jax"], entry["jax_scanned"]
            entry["scanned_over_default"] = {
                f"b{b}": s[f"tokens_per_s_b{b}"] / j[f"tokens_per_s_b{b}"] for b in (1, 8)}
        if have_torch:
            j, t = entry["jax"], entry["torch_eager"]
            t["weight_GBps_b1"] = entry["param_bytes"] * t["tokens_per_s_b1"] / 1e9
            entry["ratios"] = {
                "jax_b1_over_torch_b1": j["tokens_per_s_b1"] / t["tokens_per_s_b1"],
                "jax_b8_over_torch_b1": j["tokens_per_s_b8"] / t["tokens_per_s_b1"],
                "jax_b8_over_torch_b8": j["tokens_per_s_b8"] / t["tokens_per_s_b8"],
                "ttft_torch_over_jax": t["time_to_first_token_ms_b1"] / j["time_to_first_token_ms_b1"],
            }
        report["models"][name] = entry
    report["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    print(json.dumps(common.rounded(report), indent=2))


if __name__ == "__main__":
    main()
