"""Command line generation, with the upstream generate.py flags and presets.

    python -m mypt_jax.generate --model PATH --prompt TEXT [--max_new_tokens N]
        [--temperature T --top_k K --top_p P --repetition_penalty R] [--preset NAME]
        [--mode basic|qa|creative|factual|code] [--seed S] [--completion_only]

`--model` (or `--model_name`) is one of our checkpoints or an upstream checkpoint directory,
or a name under ./checkpoints/ as upstream. Only the `\\n`, `\\t` and `\\\\` escapes of
`--prompt` are turned into characters; everything else, non-ASCII text included, is kept.
Settings and load messages go to stderr; stdout gets the prompt and its completion decoded
together, as upstream prints them, or only the completion with `--completion_only`.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from collections.abc import Sequence

from mypt_jax.decoding import decode
from mypt_jax.interop.upstream_cli import resolve_model_path

# Upstream --mode values other than basic ignore the sampling flags and use a fixed preset.
MODE_PRESETS = {"qa": "factual", "creative": "creative", "factual": "factual", "code": "code"}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` become characters; nothing else changes (unlike unicode_escape)."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def sampling_from_args(args: argparse.Namespace) -> decode.SamplingParams:
    """Upstream precedence: a non-basic mode's preset, else --preset, else the flags."""
    if args.mode in MODE_PRESETS:
        return decode.get_preset(MODE_PRESETS[args.mode])
    if args.preset:
        return decode.get_preset(args.preset)
    return decode.SamplingParams(
        args.temperature, args.top_k, args.top_p, args.repetition_penalty
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mypt_jax.generate", description=__doc__.split("\n")[0])
    p.add_argument("--model_name", "--model", dest="model", default="default",
                   help="checkpoint directory (ours or upstream), or a name under ./checkpoints/")
    p.add_argument("--legacy_checkpoint", default=None,
                   help="a file inside the model directory, passed to mypt_jax.load")
    p.add_argument("--prompt", default="Die Nacht")
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help=f"default: {decode.DEFAULT_MAX_NEW_TOKENS}, or what the model's block_size "
                        "leaves after the prompt when that is less")
    p.add_argument("--mode", default="basic", choices=["basic", *MODE_PRESETS])
    p.add_argument("--show_info", action="store_true", help="print the model config first")
    p.add_argument("--temperature", type=float, default=0.8, help="<= 0: greedy")
    p.add_argument("--top_k", type=int, default=50, help="0: off")
    p.add_argument("--top_p", type=float, default=0.95, help="1: off")
    p.add_argument("--repetition_penalty", type=float, default=1.1, help="1: off")
    p.add_argument("--preset", default=None, choices=sorted(decode.PRESETS),
                   help="overrides the four sampling flags")
    p.add_argument("--force_fp16", action="store_true",
                   help="load parameters and compute in float16 (slow on CPU)")
    p.add_argument("--seed", type=int, default=None,
                   help="PRNG seed for sampling (default: a fresh one, printed to stderr)")
    p.add_argument("--completion_only", action="store_true", help="print only the new text")
    p.add_argument("--no_repeat_guard", action="store_true",
                   help="do not stop when the last 32 ids repeat the 32 before them")
    return p


def run(args: argparse.Namespace, out=None, err=None, load=None) -> decode.Generation:
    """Loads the model (with `load`, default `mypt_jax.load`), generates, prints."""
    # The streams of the call, not of the import (a test's captured stdout closes after it).
    out, err = out or sys.stdout, err or sys.stderr
    if load is None:
        import mypt_jax

        load = mypt_jax.load
    path = resolve_model_path(args.model, args.legacy_checkpoint)
    sampling = sampling_from_args(args)
    seed = secrets.randbits(31) if args.seed is None else args.seed
    prompt = unescape(args.prompt)
    model = load(path, dtype="float16") if args.force_fp16 else load(path)
    if args.show_info:
        print(f"model: {path}\nconfig: {model.config}\ntokenizer: {model.tokenizer}", file=err)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens, note = decode.fit_new_tokens(
            [len(model.tokenizer.encode(prompt))], decode.block_size_of(model),
            decode.DEFAULT_MAX_NEW_TOKENS)
        if note:
            print(note, file=err)
    print(
        f"generating: max_new_tokens={max_new_tokens} temperature={sampling.temperature} "
        f"top_k={sampling.top_k} top_p={sampling.top_p} "
        f"repetition_penalty={sampling.repetition_penalty} seed={seed}",
        file=err,
    )
    (gen,) = decode.generate_text(
        model, model.tokenizer, [prompt], max_new_tokens=max_new_tokens,
        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
        repetition_penalty=sampling.repetition_penalty, seed=seed,
        repeat_guard=not args.no_repeat_guard,
    )
    if args.completion_only:
        print(gen.completion, file=out)
    elif args.mode == "qa":
        print(f"Question: {prompt}\nAnswer: {gen.text}", file=out)
    else:
        print(f"Prompt: {prompt}\n\n{gen.text}", file=out)
    print(f"[{len(gen.ids)} new tokens, stopped by {gen.stopped_by}]", file=err)
    return gen


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
