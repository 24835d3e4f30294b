"""Time and peak memory of `convert import` on a synthetic checkpoint of the full 750M shape.

Builds an upstream-format directory on disk (n_layer 32, n_embd 1280, n_head 20, block 1024,
vocab 50304, tied weight stored twice, bf16 payload, as upstream training writes it), streaming
one tensor at a time so the builder never holds the payload, then runs
`python -m mypt_jax.convert import` in a subprocess and reports its wall time and peak RSS.

  python benchmarks/bench_convert.py [--workdir DIR] [--keep] [--arch seed|head]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np

from mypt_jax.data.tokenizer import Tokenizer, head_tokenizer
from mypt_jax.interop import state_dict, torch_pickle, upstream
from mypt_jax.model import ModelConfig


class SyntheticTensor:
    """Random bf16 values made only when the writer asks for them (seeded: reproducible)."""

    def __init__(self, shape: tuple[int, ...], seed: int, ones: bool = False):
        self.shape, self.dtype, self.seed, self.ones = shape, np.dtype(ml_dtypes.bfloat16), seed, ones

    def __array__(self, dtype=None, copy=None):
        if self.ones:
            out = np.ones(self.shape, np.float32)
        else:
            rng = np.random.default_rng(self.seed)
            out = rng.standard_normal(self.shape, dtype=np.float32)
            out *= 0.02
        return out.astype(self.dtype)


def build_upstream_dir(path: Path, cfg: ModelConfig) -> int:
    """Writes the directory; returns model.pt's size in bytes."""
    sd = OrderedDict()
    for i, (key, shape) in enumerate(state_dict.upstream_shapes(cfg).items()):
        seed = 0 if key == state_dict.TIED_KEY else i  # tied: an equal second copy, as upstream
        sd[key] = SyntheticTensor(shape, seed, ones=key.endswith(".weight") and len(shape) == 1)
    path.mkdir(parents=True)
    tok = head_tokenizer() if cfg.generation == "head" else Tokenizer()
    for name, content in {
        "config.json": cfg.to_upstream({"device": "cuda"}) | {"device": "cuda"},
        "tokenizer.json": tok.get_state(),
        "training_state.json": {"step": 0, "checkpoint_dtype": "bf16"},
    }.items():
        (path / name).write_text(json.dumps(content, indent=2))
    torch_pickle.save({"state_dict": sd, "checkpoint_dtype": "bf16", "model_dtype": "float32"},
                      path / "model.pt")
    return (path / "model.pt").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    ap.add_argument("--arch", choices=("seed", "head"), default="seed")
    args = ap.parse_args()
    llama = dict(pos_encoding="rope", mlp_type="swiglu", norm_type="rmsnorm")
    cfg = ModelConfig(n_layer=32, n_embd=1280, n_head=20, block_size=1024, vocab_size=50304,
                      bias=False, tie_weights=True, dropout=0.1,
                      **(llama if args.arch == "head" else {}))
    work = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        payload = build_upstream_dir(work / "up", cfg)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mypt_jax.convert", "import",
                               str(work / "up"), str(work / "ours")],
                              capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"convert failed:\n{proc.stderr}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
        out_bytes = sum(f.stat().st_size for f in (work / "ours").rglob("*") if f.is_file())
        print(json.dumps({
            "arch": args.arch, "params": upstream.param_count(cfg),
            "payload_bytes": payload, "build_s": round(build_s, 1),
            "import_wall_s": round(wall, 1), "import_peak_rss_bytes": peak,
            "peak_rss_over_payload": round(peak / payload, 2), "output_bytes": out_bytes,
        }, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
