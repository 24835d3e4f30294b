"""Eval prompts: the upstream eval-prompts JSON, one batched greedy generation, exact scores.

The file format is the upstream one (`--eval_prompts_file` of train.py):
`{"description": ..., "system_prompt": ..., "prompts": {name: full prompt text},
"expected_outputs": {name: expected completion}}`. Prompts without an expected output are
generated and reported but not scored. The command line is `python -m mypt_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mypt_jax.data.paths import read_json
from mypt_jax.data.tokenizer import SEED_SPECIAL_TOKENS, Tokenizer
from mypt_jax.decoding import decode, fitting
from mypt_jax.decoding.fitting import fit_new_tokens

# Same strings in the seed and the newer token maps; only their ids moved.
_STOP_TAGS = (SEED_SPECIAL_TOKENS["myPT_assistant_close"], SEED_SPECIAL_TOKENS["myPT_eot"])
_TRAILING_PUNCTUATION = ".!?"
DEFAULT_MAX_NEW_TOKENS = 64  # upstream train.py --eval_max_new_tokens


class EvalPromptsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class EvalPrompts:
    prompts: dict[str, str]  # name -> full prompt text (system block, user turn, open tag)
    expected: dict[str, str]  # name -> expected completion without the stop tag
    system_prompt: str | None = None
    description: str | None = None


def load_eval_prompts(path: str | os.PathLike) -> EvalPrompts:
    path = Path(path)
    data = read_json(path, EvalPromptsError, "eval prompts file")
    if not isinstance(data, dict):
        raise EvalPromptsError(f"{path}: expected a JSON object with a 'prompts' key")

    def text_map(key: str, required: bool) -> dict[str, str]:
        value = data.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, dict) or (required and not value):
            raise EvalPromptsError(f"{path}: {key!r} must be a non-empty object name -> text")
        for name, text in value.items():
            if not isinstance(text, str):
                raise EvalPromptsError(f"{path}: {key}[{name!r}] must be a string, got {text!r}")
        return dict(value)

    prompts = text_map("prompts", required=True)
    expected = text_map("expected_outputs", required=False)
    unknown = sorted(set(expected) - set(prompts))
    if unknown:
        raise EvalPromptsError(f"{path}: expected_outputs names {unknown} that are not in prompts")
    for key in ("system_prompt", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise EvalPromptsError(f"{path}: {key!r} must be a string")
    return EvalPrompts(prompts, expected, data.get("system_prompt"), data.get("description"))


def strip_stop_tag(completion: str) -> str:
    for tag in _STOP_TAGS:
        if completion.endswith(tag):
            return completion[: -len(tag)]
    return completion


def normalize(text: str) -> str:
    return text.strip().casefold().rstrip(_TRAILING_PUNCTUATION).strip()


def score(completion: str, expected: str) -> dict[str, bool]:
    """exact: completion (stop tag removed) == expected; normalized: ignoring case,
    surrounding whitespace and trailing `.!?`."""
    answer = strip_stop_tag(completion)
    return {"exact": answer == expected, "normalized": normalize(answer) == normalize(expected)}


def evaluate(
    model: Any,
    tokenizer: Tokenizer | None,
    eval_prompts: EvalPrompts,
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Greedy completions of all prompts in one batch, each scored against its expected output.

    `max_new_tokens=None`: `new_tokens_for` (64, or less to fit block_size; a warning says so).

    Returns one dict per prompt (file order): name, prompt, completion (stop tag removed),
    expected (None if the file has none), exact, normalized (None when not scored),
    stopped_by.
    """
    names = list(eval_prompts.prompts)
    if max_new_tokens is None:
        max_new_tokens, note = new_tokens_for(model, tokenizer, eval_prompts)
        if note:
            warnings.warn(note, stacklevel=2)
    generations = decode.generate_text(
        model, tokenizer, [eval_prompts.prompts[n] for n in names],
        max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0,
        repetition_penalty=1.0,
    )
    results = []
    for name, gen in zip(names, generations, strict=True):
        expected = eval_prompts.expected.get(name)
        scores = score(gen.completion, expected) if expected is not None else {
            "exact": None, "normalized": None}
        results.append({
            "name": name,
            "prompt": gen.prompt,
            "completion": strip_stop_tag(gen.completion),
            "expected": expected,
            **scores,
            "stopped_by": gen.stopped_by,
        })
    return results


def generation_shape(eval_prompts: EvalPrompts, tokenizer: Tokenizer, block_size: int,
                     max_new_tokens: int) -> tuple[int, int, int]:
    """(rows B, prompt bucket P, new-token bucket N) of `evaluate`'s generation program."""
    ids = fitting.fit_prompts([tokenizer.encode(p) for p in eval_prompts.prompts.values()],
                              block_size=block_size, max_new_tokens=max_new_tokens)
    return (len(ids), fitting.prompt_bucket(max(len(x) for x in ids), block_size),
            fitting.new_tokens_bucket(max_new_tokens))


def new_tokens_for(model: Any, tokenizer: Tokenizer | None, eval_prompts: EvalPrompts,
                   default: int = DEFAULT_MAX_NEW_TOKENS) -> tuple[int, str | None]:
    """`default` new tokens, or fewer where the model's block_size leaves less after the
    longest prompt; and a one-line note when capped (`fitting.fit_new_tokens`)."""
    return new_tokens_within(eval_prompts, tokenizer or model.tokenizer,
                             decode.block_size_of(model), default)


def new_tokens_within(eval_prompts: EvalPrompts, tokenizer: Tokenizer, block_size: int,
                      default: int = DEFAULT_MAX_NEW_TOKENS,
                      name: str = "max_new_tokens") -> tuple[int, str | None]:
    """`new_tokens_for` before any model exists (a run's config): the note names `name`."""
    lens = [len(tokenizer.encode(p)) for p in eval_prompts.prompts.values()]
    return fit_new_tokens(lens, block_size, default, name=name)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    scored = [r for r in results if r["exact"] is not None]
    return {
        "scored": len(scored),
        "exact": sum(r["exact"] for r in scored),
        "normalized": sum(r["normalized"] for r in scored),
    }


def format_table(results: Sequence[dict[str, Any]]) -> str:
    def mark(value):
        return "-" if value is None else ("yes" if value else "no")

    rows = [("name", "exact", "norm", "completion", "expected")]
    rows += [(r["name"], mark(r["exact"]), mark(r["normalized"]), repr(r["completion"]),
              "" if r["expected"] is None else repr(r["expected"])) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
             for row in rows]
    s = summarize(results)
    lines.append(f"exact {s['exact']}/{s['scored']}, normalized {s['normalized']}/{s['scored']}")
    return "\n".join(line.rstrip() for line in lines)
