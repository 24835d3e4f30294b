"""Eval prompts: the upstream eval-prompts JSON, one batched greedy generation, exact scores.

The command line; the machinery is `mypt_jax/decoding/eval_prompts.py`.

    python -m mypt_jax.evaluate --model PATH --eval_prompts_file F [--max_new_tokens N] [--out F.json]

Without `--max_new_tokens`: 64 (upstream's eval length), or what the model's block_size leaves
after the longest prompt when that is less, said in one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mypt_jax.data.paths import write_json_atomic
from mypt_jax.decoding.eval_prompts import (  # noqa: F401  (the old mypt_jax.evaluate names)
    DEFAULT_MAX_NEW_TOKENS,
    EvalPrompts,
    EvalPromptsError,
    evaluate,
    format_table,
    load_eval_prompts,
    new_tokens_for,
    score,
    summarize,
)


def default_out_path(model: str, eval_prompts_file: str) -> Path:
    """eval_results/<model dir name>__<prompts file stem>.json under the working directory."""
    return Path("eval_results") / f"{Path(model).name}__{Path(eval_prompts_file).stem}.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mypt_jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model_name", "--model", dest="model", required=True,
                   help="checkpoint directory (ours or upstream), or a name under ./checkpoints/")
    p.add_argument("--eval_prompts_file", required=True)
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help=f"default: {DEFAULT_MAX_NEW_TOKENS}, or what the model's block_size "
                        "leaves after the longest prompt when that is less")
    p.add_argument("--out", default=None,
                   help="JSON results (default eval_results/<model>__<prompts file>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import mypt_jax
    from mypt_jax.interop.upstream_cli import resolve_model_path

    args = build_parser().parse_args(argv)
    try:
        eval_prompts = load_eval_prompts(args.eval_prompts_file)
        path = resolve_model_path(args.model)
        model = mypt_jax.load(path)
        max_new_tokens = args.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens, note = new_tokens_for(model, model.tokenizer, eval_prompts)
            if note:
                print(note, file=sys.stderr)
        results = evaluate(model, model.tokenizer, eval_prompts, max_new_tokens)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    out = Path(args.out) if args.out else default_out_path(args.model, args.eval_prompts_file)
    write_json_atomic(out, {
        "model": str(path),
        "eval_prompts_file": str(args.eval_prompts_file),
        "max_new_tokens": max_new_tokens,
        "summary": summarize(results),
        "results": results,
    })
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
