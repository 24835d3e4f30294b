"""Converts between upstream (PyTorch MyPT) checkpoints and ours.

  python -m mypt_jax.convert import SRC DST          upstream dir or final.pt/latest.pt -> ours
  python -m mypt_jax.convert export SRC DST [--dtype fp32|bf16|fp16]   ours -> upstream dir
  python -m mypt_jax.convert init-special SRC DST [--scale 1.0]   upstream dir -> upstream dir
                                                   (UPSTREAM_MODEL.md §3, Phase 3a targets)

None of these import torch. Each prints a JSON summary of what it found and wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from mypt_jax.interop import model_io, upstream
from mypt_jax.interop.torch_pickle import CheckpointError

_NP_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_PARAM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def import_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Upstream checkpoint (either generation, any payload) -> our checkpoint directory.

    Weights keep the payload's dtype (bf16 stays bf16: lossless); load with dtype= to cast.
    The numpy arrays read from the file are handed to orbax as they are (no jax copy, no
    orbax copy: `model_io.save_model`), so the peak is about one payload plus the runtime.
    """
    ckpt = upstream.read_upstream(src)
    dtypes = {str(np.dtype(a.dtype)) for a in _leaves(ckpt.params)}
    (param_dtype,) = dtypes
    config = ckpt.config.replace(param_dtype=param_dtype)
    source = {**ckpt.source, "upstream_config": ckpt.upstream_config,
              "training_state": ckpt.training_state}
    model_io.save_model(dst, ckpt.params, config, ckpt.tokenizer, source=source)
    return {"imported": str(src), "to": str(dst), **{k: v for k, v in ckpt.source.items() if k != "path"},
            "config": config.to_dict()}


def export_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None
) -> dict[str, Any]:
    """Our checkpoint -> an upstream directory that upstream `GPT.load` reads unchanged."""
    config = model_io.read_config(src)
    tokenizer = model_io.read_tokenizer(src)
    params = model_io.load_params(src, config)
    dtype = dtype or _NP_DTYPE_NAMES[config.param_dtype]
    source = model_io.read_source(src)
    upstream.write_upstream(
        dst, params, config, tokenizer, dtype=dtype,
        training_state=source.get("training_state"), training_fields=source.get("upstream_config"),
    )
    return {"exported": str(src), "to": str(dst), "payload_dtype": dtype,
            "generation": config.generation}


def init_special(src: str | os.PathLike, dst: str | os.PathLike, scale: float = 1.0) -> dict[str, Any]:
    """The `domain_v5` -> `domain_v5_sft_ready` step on the user's own upstream checkpoint."""
    summary = upstream.init_special_dir(src, dst, scale=scale)
    return {"source": str(src), "to": str(dst), **summary}


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    return [tree]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mypt_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="upstream checkpoint -> ours")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("export", help="ours -> upstream directory")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", choices=sorted(_PARAM_DTYPES), default=None,
                   help="payload dtype (default: the stored parameter dtype)")
    p = sub.add_parser("init-special", help="pre-weight the Phase 3a special-tag embeddings")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--scale", type=float, default=1.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "import":
            out = import_checkpoint(args.src, args.dst)
        elif args.command == "export":
            out = export_checkpoint(args.src, args.dst, args.dtype)
        else:
            out = init_special(args.src, args.dst, args.scale)
    except (CheckpointError, upstream.UpstreamError, model_io.ModelCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
