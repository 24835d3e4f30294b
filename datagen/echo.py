"""Echo SFT dataset: `"{prefix} {content}"` -> `content`, the model copies the content verbatim.

Same structure as the upstream's `generate_echo_dataset.py`: EN prefixes pair only with EN
content and DE prefixes only with DE content (prefix outer loop, content inner loop, pools in a
fixed order); no dedup; one shuffle with `random.Random(seed)`; then the cap keeps the first
`max_examples` of the shuffled list, so it is a seeded random subset. Record i gets
`context = "episode_id: echo_{i:04d}, category: echo_{tag}"`; language is "de" for `_de` tags.

Differences from the upstream, on purpose:
* the content is this project's own, and gibberish pools also hold procedural words and
  sentences (datagen/gibberish.py, fixed seed PROCEDURAL_SEED: the pools do not change with
  --seed; --seed changes only order and subset);
* the cap keeps the seed doc's test prompts (MUST_KEEP) whenever they are in the pool: the kept
  subset is MUST_KEEP plus the first others of the shuffled list, still in shuffled order;
* a negative --max_examples is an error (0 or omitted means no cap, as upstream).

    python -m datagen.echo --gibberish exclude --max_examples 2500 --output_dir data/sft_echo_beta
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Sequence

from datagen import content_echo as C
from datagen import gibberish
from datagen.records import make_record, write_generator_output

GIBBERISH_MODES = ("include", "exclude", "only")
OUTPUT_NAME = "mypt_echo_diverse.jsonl"
PROCEDURAL_SEED = 2026  # fixes the procedural gibberish in the pools, independent of --seed

# The seed doc's Step 4 test prompts; a cap never drops them.
MUST_KEEP = ("Repeat: Hello world", "Echo: Testing 123", "Say: Blurpix", "Repeat: Zanthor quexling")

Item = tuple[str, str, str]  # (question, answer, category)


def _pools() -> dict[str, tuple[str, ...]]:
    return {
        "word_en": C.WORDS_EN,
        "phrase_en": C.PHRASES_EN,
        "number": C.NUMBERS_AND_CODES,
        "sentence_en": C.SENTENCES_EN,
        "gibberish_word": (*C.GIBBERISH_WORDS, *gibberish.nonsense_words(16, PROCEDURAL_SEED)),
        "gibberish_sentence": (
            *C.GIBBERISH_SENTENCES,
            *gibberish.nonsense_sentences(4, PROCEDURAL_SEED + 1),
        ),
        "word_de": C.WORDS_DE,
        "phrase_de": C.PHRASES_DE,
        "sentence_de": C.SENTENCES_DE,
        "gibberish_word_de": (
            *C.GIBBERISH_WORDS_DE,
            *gibberish.nonsense_words(4, PROCEDURAL_SEED, german=True),
        ),
        "gibberish_sentence_de": (
            *C.GIBBERISH_SENTENCES_DE,
            *gibberish.nonsense_sentences(2, PROCEDURAL_SEED + 1, german=True),
        ),
    }


# Pool order per mode, as upstream: (EN pools, DE pools).
_POOLS_BY_MODE = {
    "exclude": (
        ("word_en", "phrase_en", "number", "sentence_en"),
        ("word_de", "phrase_de", "sentence_de"),
    ),
    "include": (
        ("word_en", "gibberish_word", "phrase_en", "number", "sentence_en", "gibberish_sentence"),
        ("word_de", "gibberish_word_de", "phrase_de", "sentence_de", "gibberish_sentence_de"),
    ),
    "only": (
        ("gibberish_word", "gibberish_sentence"),
        ("gibberish_word_de", "gibberish_sentence_de"),
    ),
}


def build_items(gibberish_mode: str) -> list[Item]:
    """Every (question, answer, category) of a mode in generation order, before shuffle and cap."""
    if gibberish_mode not in GIBBERISH_MODES:
        raise ValueError(f"gibberish must be one of {GIBBERISH_MODES}, got {gibberish_mode!r}")
    pools = _pools()
    en_tags, de_tags = _POOLS_BY_MODE[gibberish_mode]
    items: list[Item] = []
    for prefixes, tags in ((C.PREFIXES_EN, en_tags), (C.PREFIXES_DE, de_tags)):
        for prefix in prefixes:
            for tag in tags:
                items.extend(
                    (f"{prefix} {content}", content, f"echo_{tag}") for content in pools[tag]
                )
    return items


def _cap(items: list[Item], max_examples: int) -> list[Item]:
    """The first max_examples items, except that MUST_KEEP questions present are always kept."""
    n_must = sum(q in MUST_KEEP for q, _, _ in items)
    budget_must = min(n_must, max_examples)
    budget_rest = max_examples - budget_must
    kept = []
    for item in items:
        if item[0] in MUST_KEEP:
            if budget_must:
                budget_must -= 1
                kept.append(item)
        elif budget_rest:
            budget_rest -= 1
            kept.append(item)
    return kept


def generate(
    gibberish: str = "exclude", max_examples: int | None = None, seed: int = 42
) -> list[dict]:
    """The echo records for a gibberish mode: shuffled with Random(seed), then capped."""
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 (0 means no cap), got {max_examples}")
    items = build_items(gibberish)
    random.Random(seed).shuffle(items)
    if max_examples and max_examples < len(items):
        items = _cap(items, max_examples)
    return [
        make_record(
            question,
            answer,
            f"episode_id: echo_{i:04d}, category: {category}",
            "de" if "_de" in category else "en",
        )
        for i, (question, answer, category) in enumerate(items)
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datagen.echo",
        description=f"Write <output_dir>/{OUTPUT_NAME} (relative paths are relative to the CWD).",
    )
    parser.add_argument("--max_examples", type=int, default=None, help="cap (0 or omitted: no cap)")
    parser.add_argument("--output_dir", type=str, default="data/sft_echo")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gibberish", type=str, choices=GIBBERISH_MODES, default="exclude")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_examples is not None and args.max_examples < 0:
        parser.error(f"--max_examples must be >= 0 (0 means no cap), got {args.max_examples}")

    records = generate(args.gibberish, args.max_examples, args.seed)
    write_generator_output(args.output_dir, OUTPUT_NAME, records)
    categories = Counter(record["context"].rsplit("category: ", 1)[1] for record in records)
    for category, n in sorted(categories.items()):
        print(f"  {category}: {n}")


if __name__ == "__main__":
    main()
