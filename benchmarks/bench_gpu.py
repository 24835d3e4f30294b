"""Everything on one accelerator in under 10 minutes: the 750M train step in bf16, decoding, data.

    python benchmarks/bench_gpu.py [--out results.json] [--budget_s 540]
    python benchmarks/bench_gpu.py --smoke            # tiny shapes, any machine (CPU test)

On the device it finds (GPU, TPU, or CPU with --smoke), in this order, each section's JSON
printed as soon as it is done (and the whole report rewritten to --out), so a run cut short
still reports what it measured:

1. `peak`: the published dense bf16 peak of the device kind (benchmarks/common.py) and, for
   reference, the measured rate of a large bf16 matmul.
2. `train`: the Phase 3a model (32 layers, 1280 wide, 20 heads, vocab 50304, block 512) with
   precision "mixed" (float32 master weights, bfloat16 matmuls), the trainer's own jitted step
   (AdamW, clip, masked loss), at the Phase 3a batch (16) and then a per-device batch sweep
   (`--batches`); per batch: compile time, step time, tokens/s, MFU against the published
   peak, and device memory. `best` names the batch with the highest MFU.
3. `attention`: the 750M attention (B=16, T=512, 20 heads of 64) forward + backward in three
   implementations: our einsum attention (what the model runs), and `jax.nn.dot_product_attention`
   with implementation "xla" and "cudnn" (GPU only), to decide whether the cuDNN path pays.
4. `decode`: greedy generation of 128 tokens after a 16-token prompt with the 750M model in
   bfloat16, batch 1 and 8 (tokens/s, time to first token).
5. `data`: episode-loader batches/s at batch 16 block 512 and `prepare` records/s, host side.

Sections that would start after `--budget_s` are skipped (named in `skipped`). Prints JSON;
never asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_train, common  # noqa: E402

SMOKE_SHAPE = dict(n_layer=2, n_embd=64, n_head=4, block_size=64)


class Report:
    def __init__(self, out: Path | None, budget_s: float):
        self.data: dict[str, Any] = {"benchmark": "gpu", "command": " ".join(sys.argv),
                                     "machine": common.machine_info(), "skipped": []}
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def section(self, name: str, fn, *args) -> None:
        if self.elapsed() > self.budget_s:
            self.data["skipped"].append(name)
            return
        t0 = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - a failed section must not lose the others
            result = {"error": f"{type(e).__name__}: {e}"}
        result["section_s"] = time.perf_counter() - t0
        self.data[name] = common.rounded(result)
        print(json.dumps({name: self.data[name]}), flush=True)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        if self.out:
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            tmp.replace(self.out)


def device_peak(args) -> dict[str, Any]:
    kind = jax.devices()[0].device_kind
    published = common.published_bf16_peak(kind)
    n = 512 if args.smoke else 8192
    run, flops = common.matmul_runner(n, 1 if args.smoke else 10, "bfloat16")
    measured = flops / min(common.timed(run) for _ in range(3))
    if published is None and jax.default_backend() == "cpu":
        published_note = "cpu: no published peak; MFU uses the measured bf16 matmul rate"
    else:
        published_note = "published dense bf16 peak" if published else f"unknown kind {kind!r}"
    return {"device_kind": kind, "published_bf16_flops_per_s": published,
            "measured_bf16_matmul_flops_per_s": measured, "matmul_n": n, "note": published_note}


def peak_for_mfu(report: Report) -> float:
    p = report.data.get("peak", {})
    return p.get("published_bf16_flops_per_s") or p.get("measured_bf16_matmul_flops_per_s")


def train_one(args, batch: int, peak: float, remat: str) -> dict[str, Any]:
    over = SMOKE_SHAPE if args.smoke else {}
    mc = bench_train.model_config("750m", args.precision, remat, **over)
    step = bench_train.JaxStep(mc, batch, loss_chunk_size=args.loss_chunk_size)
    info = step.compile()
    step.init(bench_train.synthetic_batch(batch, mc.block_size, 0.15))
    step.run()  # first run: allocation, autotuning leftovers
    times = [common.timed(step.run) for _ in range(args.steps)]
    best, med = min(times), float(np.median(times))
    flops = common.train_step_flops(mc, batch, mc.block_size)["total"]
    out = {"batch": batch, "remat": remat, "compile_s": info["total_s"], "compiled_memory": info["memory"],
           "step_s_best": best, "step_s_median": med,
           "tokens_per_s": batch * mc.block_size / med,
           "mfu": flops / med / peak, "mfu_best": flops / best / peak,
           "device_memory": common.device_memory()}
    del step
    return out


def train(args, report: Report) -> dict[str, Any]:
    peak = peak_for_mfu(report)
    out: dict[str, Any] = {"precision": args.precision, "remat": args.remat,
                           "loss_chunk_size": args.loss_chunk_size, "runs": []}
    batches = [int(b) for b in args.batches.split(",")]
    remats = args.remat.split(",")
    for i, b in enumerate(batches):
        if i and report.elapsed() > args.train_budget_s:
            out["sweep_cut_at_batch"] = b
            break
        # The first remat policy that fits: XLA:CPU's accounting of the 750M step at batch 16
        # without remat is ~70 GB of temporaries (f32 attention probabilities dominate), at
        # the edge of an 80 GB card; "dots" needs ~21 GB, "full" ~10 GB.
        for remat in remats:
            try:
                out["runs"].append(train_one(args, b, peak, remat))
                break
            except Exception as e:  # noqa: BLE001 - out of memory: next policy, or end
                gc.collect()  # drop the failed attempt's buffers before the next one
                out["runs"].append({"batch": b, "remat": remat,
                                    "error": f"{type(e).__name__}: {str(e)[:300]}"})
        if "error" in out["runs"][-1]:
            break
    ok = [r for r in out["runs"] if "mfu" in r]
    if ok:
        out["best"] = max(ok, key=lambda r: r["mfu"])["batch"]
    return out


def attention(args) -> dict[str, Any]:
    B, T, H, D = (4, 64, 4, 16) if args.smoke else (16, 512, 20, 64)
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (B, T, H, D), jnp.bfloat16) for kk in ks)
    mask = jnp.tril(jnp.ones((T, T), bool))

    def ours(q, k, v):
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / math.sqrt(D)
        p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
        return jnp.einsum("bhts,bshd->bthd", p.astype(q.dtype), v)

    impls = {"einsum": ours,
             "dpa_xla": lambda q, k, v: jax.nn.dot_product_attention(
                 q, k, v, is_causal=True, implementation="xla")}
    if jax.default_backend() == "gpu":
        impls["dpa_cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="cudnn")
    out: dict[str, Any] = {"shape_BxTxHxD": [B, T, H, D]}
    flops = 3 * 4 * B * H * T * T * D  # forward (QK^T and PV) + backward, the full square
    for name, f in impls.items():
        g = jax.jit(jax.grad(lambda q, k, v, f=f: f(q, k, v).astype(jnp.float32).sum(),
                             argnums=(0, 1, 2)))
        try:
            jax.block_until_ready(g(q, k, v))
            t = min(common.timed(lambda g=g: jax.block_until_ready(g(q, k, v))) for _ in range(5))
            out[name] = {"fwd_bwd_ms": 1e3 * t, "flops_per_s": flops / t}
        except Exception as e:  # noqa: BLE001 - cuDNN may refuse a shape or be missing
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return out


def decoding(args) -> dict[str, Any]:
    from flax import nnx

    from mypt_jax.decoding import decode
    from mypt_jax.model import GPT, ModelConfig

    over = SMOKE_SHAPE if args.smoke else dict(n_layer=32, n_embd=1280, n_head=20, block_size=512)
    cfg = ModelConfig(vocab_size=bench_train.VOCAB, dropout=0.0, param_dtype="bfloat16",
                      dtype="bfloat16", **over)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    n_new = 16 if args.smoke else 128
    prompts = np.random.default_rng(0).integers(0, 50257, (8, 16)).tolist()

    def gen(batch: int, n: int):
        return decode.generate_tokens(model, prompts[:batch], max_new_tokens=n, stop_ids=[],
                                      repeat_guard=False)

    runners = {"b1": lambda: gen(1, n_new), "b8": lambda: gen(8, n_new), "ttft": lambda: gen(1, 1)}
    times = common.interleaved(runners, 3)
    flops_tok = common.decode_flops_per_token(cfg, 16 + n_new // 2)
    out: dict[str, Any] = {"new_tokens": n_new, "prompt_len": 16, "dtype": "bfloat16",
                           "compile_and_first_s_b1": times["b1"]["first_s"]}
    for b in (1, 8):
        tps = b * n_new / times[f"b{b}"]["best_s"]
        out[f"tokens_per_s_b{b}"] = tps
        out[f"ms_per_step_b{b}"] = 1e3 * times[f"b{b}"]["best_s"] / n_new
        out[f"model_flops_per_s_b{b}"] = tps * flops_tok
    out["time_to_first_token_ms_b1"] = 1e3 * times["ttft"]["best_s"]
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out["weight_bytes_per_s_b1"] = param_bytes * out["tokens_per_s_b1"]
    return out


def data_throughput(args) -> dict[str, Any]:
    from benchmarks import bench_loader
    from mypt_jax.data.prepare import prepare

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        root = Path(tmp)
        n_eps = 500 if args.smoke else 15_000
        out["loader_dataset"] = bench_loader.make_dataset(root / "ds", n_eps)
        loader_args = argparse.Namespace(batch_size=16, block_size=512,
                                         num_batches=50 if args.smoke else 1000)
        out["loader"] = bench_loader.measure(root / "ds", loader_args)
        rng = np.random.default_rng(0)
        words = ["alpha", "beta", "gamma", "delta", "Haus", "Baum", "eins", "zwei", "3", "+"]
        n_rec = 200 if args.smoke else 5000
        src = root / "chat.jsonl"
        with src.open("w") as f:
            for _ in range(n_rec):
                q = " ".join(rng.choice(words, 12))
                a = " ".join(rng.choice(words, 30))
                f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": a}]}) + "\n")
        t0 = time.perf_counter()
        meta = prepare(src, root / "prepared", progress=False)
        s = time.perf_counter() - t0
        tokens = meta["num_train_tokens"] + meta["num_val_tokens"]
        out["prepare"] = {"records": n_rec, "tokens": tokens, "seconds": s,
                          "records_per_s": n_rec / s, "tokens_per_s": tokens / s}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes: a functional test on CPU")
    p.add_argument("--out", type=Path, default=None, help="also write the report here (JSON)")
    p.add_argument("--budget_s", type=float, default=540.0,
                   help="sections that would start after this many seconds are skipped")
    p.add_argument("--train_budget_s", type=float, default=330.0,
                   help="the batch sweep stops starting new batches after this many seconds")
    p.add_argument("--batches", default="16,32,8,64",
                   help="global batches to time, the Phase 3a batch (16) first")
    p.add_argument("--precision", default="mixed", choices=("mixed", "bf16_pure", "fp32"))
    p.add_argument("--remat", default="none,dots,full",
                   help="remat policies to try in order per batch until one fits in memory")
    p.add_argument("--loss_chunk_size", type=int, default=0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = p.parse_args(argv)
    if args.smoke and args.batches == p.get_default("batches"):
        args.batches = "4,2"
    if args.smoke:
        args.steps = min(args.steps, 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    report = Report(args.out, args.budget_s)
    skip = set(filter(None, args.skip.split(",")))
    sections = [("peak", lambda: device_peak(args)), ("train", lambda: train(args, report)),
                ("attention", lambda: attention(args)), ("decode", lambda: decoding(args)),
                ("data", lambda: data_throughput(args))]
    for name, fn in sections:
        if name in skip:
            report.data["skipped"].append(name)
        else:
            report.section(name, fn)
    report.write()
    print(json.dumps(report.data, indent=2))


if __name__ == "__main__":
    main()
