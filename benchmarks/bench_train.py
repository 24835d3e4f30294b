"""The train step, JAX against PyTorch eager in the same run: tokens/s, MFU, compile time, memory.

    python benchmarks/bench_train.py --shape small [--repeats 6] [--precision fp32]
    python benchmarks/bench_train.py --shape 750m --aot_only     # compile time only (CPU)

Shapes: `small` = 4 layers, 256 wide, 8 heads, block 256, batch 8, vocab 50304 (the CPU shape);
`750m` = the Phase 3a configs' model (32 layers, 1280 wide, 20 heads, block 512, batch 16).
Both are the seed architecture (learned positions, LayerNorm, GELU, tied weights), dropout 0.

JAX side: `training.step.make_train_step` (the trainer's own step: AdamW, upstream clip, masked
loss) on one synthetic batch: random tokens, the last `--mask_ratio` of each row trained.
PyTorch side (if torch is installed): the test suite's independent implementation
(`tests/torch_reference.TorchGPT`) holding the same initial weights, the same batch, the
same loss (masked mean CE), `clip_grad_norm_` and `torch.optim.AdamW` with the same decay
groups, in eager mode. Both run one step per call, interleaved round by round with a jitted
float32 matmul whose best rate is the measured peak for MFU (see benchmarks/common.py for the
FLOP formula). Prints one JSON object; never asserts on time.

Compile time is the ahead-of-time `lower` + `compile` of the step for abstract inputs
(`--aot_only` stops there, no arrays are allocated: the 750M check on a small machine).
Memory: XLA's buffer accounting of the compiled step (arguments, outputs, temporaries) and
the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from mypt_jax.data import batching  # noqa: E402
from mypt_jax.data import loader as data  # noqa: E402
from mypt_jax.model import ModelConfig  # noqa: E402
from mypt_jax.parallel import sharding  # noqa: E402
from mypt_jax.training.setup import config as cfg_lib  # noqa: E402
from mypt_jax.training.step import optim  # noqa: E402
from mypt_jax.training.step import train_step as ts  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, block_size=64, batch_size=4),  # smoke tests
    "small": dict(n_layer=4, n_embd=256, n_head=8, block_size=256, batch_size=8),
    "750m": dict(n_layer=32, n_embd=1280, n_head=20, block_size=512, batch_size=16),
}
VOCAB = 50304
# The optimiser settings of the Phase 3a presets (values do not change the cost).
OPT = dict(learning_rate=7e-5, max_iters=1000, warmup_iters=0.0, weight_decay=0.05,
           beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0)


def model_config(shape: str, precision: str = "fp32", remat: str = "none", **over: Any) -> ModelConfig:
    s = {k: v for k, v in SHAPES[shape].items() if k != "batch_size"}
    s.update({k: v for k, v in over.items() if v is not None})
    param_dtype, dtype = cfg_lib.PRECISIONS[precision]
    return ModelConfig(vocab_size=VOCAB, dropout=0.0, tie_weights=True, param_dtype=param_dtype,
                       dtype=dtype, remat=remat, **s)


def synthetic_batch(batch: int, seq: int, mask_ratio: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, seq), np.float32)
    mask[:, seq - max(1, int(mask_ratio * seq)):] = 1.0  # the answer sits at the end, as in SFT
    return {"inputs": rng.integers(0, 50257, (batch, seq), dtype=np.int32),
            "targets": rng.integers(0, 50257, (batch, seq), dtype=np.int32), "loss_mask": mask}


# ----------------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------------

class JaxStep:
    """The trainer's jitted step, compiled ahead of time, with its state held between calls."""

    def __init__(self, mc: ModelConfig, batch_size: int, *, loss_chunk_size: int = 0,
                 loss_positions: int = 0, seed: int = 0, mesh=None):
        self.mc, self.batch_size = mc, batch_size
        self.mesh = mesh or sharding.make_mesh((-1, 1, 1))
        if batch_size % self.mesh.size:
            raise SystemExit(f"batch size {batch_size} does not split over the {self.mesh.size} "
                             "devices of the data-parallel mesh; pass --batch_size")
        self.tx, schedule = optim.make_optimizer(**OPT)
        self.mdef = ts.model_def(mc)
        self.step_fn = ts.make_train_step(
            self.mdef, self.tx, schedule, self.mesh, seed=seed, loss_chunk_size=loss_chunk_size)
        self.loss_positions = loss_positions
        self.seed, self.state, self.batch, self.compiled = seed, None, None, None

    def abstract_inputs(self):
        state = ts.abstract_state(self.tx, self.mc, self.mesh)
        bsh = ts.batch_sharding(self.mesh)
        shape = batching.BatchShape(self.batch_size, self.mc.block_size, self.loss_positions, False)
        batch = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=bsh)
                 for k, x in batching.abstract_batch(shape).items()}
        return state, batch

    def compile(self) -> dict[str, Any]:
        """Ahead-of-time lower + compile for abstract inputs; no arrays are allocated."""
        t0 = time.perf_counter()
        lowered = self.step_fn.lower(*self.abstract_inputs())
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        return {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0,
                "memory": common.compiled_memory(self.compiled)}

    def init(self, batch_np: dict[str, np.ndarray]) -> None:
        _, params = ts.init_model(self.mc, self.mesh, self.seed)
        self.state = ts.init_state(params, self.tx, self.mc, self.mesh)
        if self.loss_positions:  # project only each row's first K trained positions
            batch_np = batching.gather_trained(batch_np, self.loss_positions)
        self.batch = data.global_batch(batch_np, self.mesh)
        jax.block_until_ready((self.state, self.batch))

    def params_numpy(self) -> dict[str, Any]:
        return jax.tree.map(np.asarray, self.state.params)

    def run(self) -> dict[str, float]:
        fn = self.compiled or self.step_fn
        self.state, metrics = fn(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return metrics


# ----------------------------------------------------------------------------------------
# PyTorch eager: the test suite's reference model, the same weights, data, loss and optimiser
# ----------------------------------------------------------------------------------------

class TorchStep:
    def __init__(self, mc: ModelConfig, params_np: dict[str, Any], batch_np: dict[str, np.ndarray]):
        import torch
        import torch.nn.functional as F

        from mypt_jax.interop import upstream
        from tests.torch_reference import Cfg, TorchGPT

        self.torch, self.F = torch, F
        cfg = Cfg(**{k: getattr(mc, k) for k in
                     ("block_size", "vocab_size", "n_embd", "n_head", "n_layer", "bias",
                      "tie_weights", "pos_encoding", "mlp_type", "norm_type")}, dropout=0.0)
        self.model = TorchGPT(cfg).train()
        sd = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in
              upstream.state_dict_from_params(params_np, mc).items()}
        self.model.load_state_dict(sd, strict=True)
        # The upstream decay groups: >= 2-D and not an embedding or a norm.
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and "embedding" not in name and "ln" not in name
             else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": OPT["weight_decay"]},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=OPT["learning_rate"], betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"])
        self.set_batch(batch_np)

    def set_batch(self, batch_np: dict[str, np.ndarray]) -> None:
        torch = self.torch
        self.x = torch.from_numpy(batch_np["inputs"].astype(np.int64))
        self.y = torch.from_numpy(batch_np["targets"].astype(np.int64))
        self.m = torch.from_numpy(batch_np["loss_mask"])

    def run(self) -> float:
        torch, F = self.torch, self.F
        logits = self.model(self.x)
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), self.y.view(-1), reduction="none")
        loss = (ce * self.m.view(-1)).sum() / self.m.sum().clamp(min=1.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPT["grad_clip"])
        self.opt.step()
        return float(loss.detach())


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------

def run_aot(args) -> dict[str, Any]:
    mc = model_config(args.shape, args.precision, args.remat, scan_layers=not args.unroll_layers)
    batch = args.batch_size or SHAPES[args.shape]["batch_size"]
    step = JaxStep(mc, batch, loss_chunk_size=args.loss_chunk_size)
    return {"compile": step.compile(), "params": _param_count(mc)}


def _param_count(mc: ModelConfig) -> int:
    from mypt_jax.model import param_shapes

    return int(sum(np.prod(s) for s in jax.tree.leaves(
        param_shapes(mc), is_leaf=lambda x: isinstance(x, tuple))))


def run_full(args) -> dict[str, Any]:
    mc = model_config(args.shape, args.precision, args.remat, scan_layers=not args.unroll_layers)
    B, T = args.batch_size or SHAPES[args.shape]["batch_size"], mc.block_size
    batch_np = synthetic_batch(B, T, args.mask_ratio)
    flops = common.train_step_flops(mc, B, T)
    impl_flops = {"jax": flops["total"], "torch_eager": flops["total"]}

    jstep = JaxStep(mc, B, loss_chunk_size=args.loss_chunk_size)
    compile_info = jstep.compile()
    jstep.init(batch_np)
    runners: dict[str, Any] = {"jax": jstep.run}
    if args.loss_positions:
        # The same loss and gradients, projecting only each row's first K trained positions:
        # fewer FLOPs executed, so its MFU counts P = K projected positions per row.
        kstep = JaxStep(mc, B, loss_chunk_size=args.loss_chunk_size,
                        loss_positions=args.loss_positions)
        kstep.compile()
        kstep.init(batch_np)
        runners["jax_loss_positions"] = kstep.run
        impl_flops["jax_loss_positions"] = common.train_step_flops(
            mc, B, T, args.loss_positions)["total"]
    first_loss: dict[str, float] = {}
    if args.torch and common.have_torch():
        tstep = TorchStep(mc, jstep.params_numpy(), batch_np)
        runners["torch_eager"] = tstep.run
    # First step of each: the losses must agree (same weights, same batch).
    first_loss["jax"] = float(jstep.run()["train_loss"])
    # The peak runner lasts about as long as a step, so machine load hits both alike.
    step_s = common.timed(jstep.run)
    matmul, matmul_flops = common.calibrated_matmul_runner(step_s, args.matmul_n)
    runners["matmul_peak"] = matmul
    if "jax_loss_positions" in runners:
        first_loss["jax_loss_positions"] = float(kstep.run()["train_loss"])
    if "torch_eager" in runners:
        first_loss["torch_eager"] = runners["torch_eager"]()
    times = common.interleaved(runners, args.repeats)
    peak = matmul_flops / times["matmul_peak"]["best_s"]
    out: dict[str, Any] = {
        "shape": {**SHAPES[args.shape], "batch_size": B, "vocab": VOCAB, "precision": args.precision,
                  "params": _param_count(mc), "remat": args.remat, "scan_layers": mc.scan_layers,
                  "loss_chunk_size": args.loss_chunk_size, "loss_positions": args.loss_positions,
                  "mask_ratio": args.mask_ratio},
        "flops_per_step": flops,
        "matmul_peak": {"n": args.matmul_n, "flops_per_s": peak,
                        "flops_per_s_median": matmul_flops / times["matmul_peak"]["median_s"]},
        "compile": compile_info,
        "first_step_loss": first_loss,
        "impls": {},
    }
    for name in runners:
        if name == "matmul_peak":
            continue
        t = times[name]
        out["impls"][name] = {
            "step_s_best": t["best_s"], "step_s_median": t["median_s"],
            "first_call_s": t["first_s"],
            "tokens_per_s": B * T / t["best_s"],
            "tokens_per_s_median": B * T / t["median_s"],
            "model_flops_per_s": impl_flops[name] / t["best_s"],
            "mfu": impl_flops[name] / t["best_s"] / peak,
            "mfu_median": impl_flops[name] / t["median_s"] / peak,
        }
    if "torch_eager" in out["impls"]:
        j, t = out["impls"]["jax"], out["impls"]["torch_eager"]
        out["jax_over_torch_tokens_per_s"] = j["tokens_per_s"] / t["tokens_per_s"]
        out["jax_over_torch_median"] = j["tokens_per_s_median"] / t["tokens_per_s_median"]
        if "jax_loss_positions" in out["impls"]:
            out["jax_loss_positions_over_torch_tokens_per_s"] = (
                out["impls"]["jax_loss_positions"]["tokens_per_s"] / t["tokens_per_s"])
    out["peak_rss_bytes"] = common.peak_rss_bytes()
    out["device_memory"] = common.device_memory()
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--precision", choices=sorted(cfg_lib.PRECISIONS), default="fp32")
    p.add_argument("--remat", choices=("none", "full", "dots"), default="none")
    p.add_argument("--unroll_layers", action="store_true",
                   help="scan_layers=False: unroll the layer scan (faster on CPU for few layers)")
    p.add_argument("--batch_size", type=int, default=0, help="0: the shape's batch")
    p.add_argument("--loss_chunk_size", type=int, default=0)
    p.add_argument("--loss_positions", type=int, default=0,
                   help="also time the step that projects only each row's first K trained "
                        "positions (its MFU counts P=K)")
    p.add_argument("--mask_ratio", type=float, default=0.15)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--matmul_n", type=int, default=2048)
    p.add_argument("--no_torch", dest="torch", action="store_false")
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--aot_only", action="store_true",
                   help="only lower + compile for abstract inputs (no arrays allocated)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.torch_threads and common.have_torch():
        import torch

        torch.set_num_threads(args.torch_threads)
    report: dict[str, Any] = {"benchmark": "train_step", "command": " ".join(sys.argv),
                              "machine": common.machine_info()}
    report.update(run_aot(args) if args.aot_only else run_full(args))
    report["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    print(json.dumps(common.rounded(report), indent=2))


if __name__ == "__main__":
    main()
