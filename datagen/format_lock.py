"""Format-lock SFT dataset: short fixed-format answers (echo words, math, facts, code trivia).

Same structure as the upstream's `generate_format_lock_dataset.py`: pairs are built section by
section, exact (question, answer) duplicates are dropped keeping the first, the list is shuffled
once with `random.Random(seed)` (same order as the upstream's `random.seed(42); random.shuffle`),
and record i gets `context = "episode_id: format_lock_{i:04d}"`. `--seed` is ours (default 42).
Language: "de" when the question contains a German indicator substring (the upstream's rule);
our indicator list also catches `Wie geht's?` and `Alles klar?`, which the upstream labels "en".
The item lists are this project's own (datagen/content_format_lock.py).

    python -m datagen.format_lock --mode minimal --math exclude --output_dir data/sft_format_lock_alpha
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator, Sequence

from datagen import content_format_lock as C
from datagen.records import make_record, write_generator_output

MODES = ("full", "minimal")
MATH_MODES = ("include", "exclude", "only", "minimal")
OUTPUT_NAME = "mypt_format_lock_v1.jsonl"

Pair = tuple[str, str]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_in_words(n: int) -> str:
    """English words for 0 <= n < 10**9, e.g. 365 -> "three hundred sixty-five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{number_in_words(head)} {name}"
            return f"{words} {number_in_words(rest)}" if rest else words
    raise AssertionError(n)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _say_pairs(words: Sequence[str]) -> Iterator[Pair]:
    for template in C.SAY_TEMPLATES:
        for w in words:
            yield template.format(w=w), f"{w}."


_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a // b,
}


def _math_pairs(table: dict) -> Iterator[Pair]:
    for op, (templates, a_range, b_range) in table.items():
        for a in a_range:
            for b in b_range(a):
                if op == "div" and a % b:
                    continue
                result = _OPS[op](a, b)
                for template in templates:
                    yield template.format(a=a, b=b), f"{result}."


def _minimal_extras() -> Iterator[Pair]:
    yield from ((q, "Yes.") for q in C.MINIMAL_YES)
    yield from ((q, "No.") for q in C.MINIMAL_NO)
    yield from C.MINIMAL_GREETINGS
    yield from C.MINIMAL_STATUS
    yield from C.MINIMAL_GERMAN
    yield from ((f"Say {c}.", f"{c}.") for c in C.MINIMAL_COLORS)
    yield from ((f"Say {d}.", f"{d}.") for d in C.MINIMAL_DAYS)


def _item_outer(items: Sequence[tuple], templates: Sequence[str], key: str) -> Iterator[Pair]:
    """For each (name, answer) item, every template filled with `{key}` = name."""
    for name, answer in items:
        for template in templates:
            yield template.format(**{key: name}), answer


def _full_extras() -> Iterator[Pair]:
    for template in C.COLOR_TEMPLATES:
        yield from ((template.format(c=c), f"{c}.") for c in C.COLORS)
    for template in C.DAY_TEMPLATES:
        yield from ((template.format(d=d), f"{d}.") for d in C.DAYS)
    for i, day in enumerate(C.DAYS):
        prev = C.DAYS[i - 1]  # Monday follows Sunday
        for template in C.DAY_SEQUENCE_TEMPLATES:
            yield template.format(prev=prev, n=i + 1), f"{day}."
    for template in C.MONTH_TEMPLATES:
        yield from ((template.format(m=m), f"{m}.") for m in C.MONTHS)
    for i, month in enumerate(C.MONTHS):
        for template in C.MONTH_SEQUENCE_TEMPLATES:
            yield template.format(prev=C.MONTHS[i - 1], n=i + 1), f"{month}."
    yield from _item_outer([(x, f"{c}.") for x, c in C.CAPITALS], C.CAPITAL_TEMPLATES, "x")
    yield from _item_outer(
        [(w, f"{_capitalised(o)}.") for w, o in C.OPPOSITES], C.OPPOSITE_TEMPLATES, "w"
    )
    yield from ((q, "Yes.") for q in C.YES_FACTS)
    yield from ((q, "No.") for q in C.NO_FACTS)
    for n, letter in enumerate(C.LETTERS, start=1):
        for template in C.LETTER_TEMPLATES:
            yield template.format(n=n, L=letter), f"{letter}."
    for n in C.NUMBERS_IN_WORDS:
        for template in C.NUMBER_WORD_TEMPLATES:
            yield template.format(n=n), f"{_capitalised(number_in_words(n))}."
    for animal, sound in C.ANIMAL_SOUNDS:
        article = "an" if animal[0] in "aeiou" else "a"
        for template in C.ANIMAL_SOUND_TEMPLATES:
            question = template.format(A=_capitalised(animal), a=animal, art=article)
            yield question, f"{sound}."
    yield from C.ANIMAL_FACTS
    yield from _item_outer([(d, f"{d}.") for d in C.DIRECTIONS], C.DIRECTION_TEMPLATES, "d")
    yield from C.GREETINGS
    yield from C.STATUS
    yield from _item_outer(C.FILE_EXTENSIONS, C.FILE_EXTENSION_TEMPLATES, "x")
    yield from C.SYMBOLS
    yield from ((C.UNIT_TEMPLATE.format(u=u), abbr) for u, abbr in C.UNITS)
    yield from _item_outer(C.PRINT_STATEMENTS, C.PRINT_TEMPLATES, "L")
    yield from _item_outer(C.COMMENT_SYNTAX, C.COMMENT_TEMPLATES, "L")
    for word, index in (("true", 1), ("false", 2)):
        for item in C.BOOLEANS:
            for template in C.BOOLEAN_TEMPLATES:
                yield template.format(V=_capitalised(word), v=word, L=item[0]), item[index]
    yield from _item_outer(C.NULL_VALUES, C.NULL_TEMPLATES, "L")
    yield from _item_outer(C.ARRAY_SYNTAX, C.ARRAY_TEMPLATES, "L")
    yield from _item_outer(C.DICT_SYNTAX, C.DICT_TEMPLATES, "L")
    yield from _item_outer(C.FUNCTION_KEYWORDS, C.FUNCTION_TEMPLATES, "L")
    yield from C.PROGRAMMING_FIXED
    yield from C.COMPARISONS
    yield from C.POLITE
    yield from C.GERMAN_BASICS


def build_pairs(mode: str, math: str) -> list[Pair]:
    """All (question, answer) pairs in generation order, exact duplicates dropped (first kept)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if math not in MATH_MODES:
        raise ValueError(f"math must be one of {MATH_MODES}, got {math!r}")

    def sections() -> Iterator[Pair]:
        if math != "only":
            yield from _say_pairs(C.SAY_WORDS_MINIMAL if mode == "minimal" else C.SAY_WORDS_FULL)
        if math in ("include", "only"):
            yield from _math_pairs(C.MATH_FULL)
        elif math == "minimal":
            yield from _math_pairs(C.MATH_MINIMAL)
        if math == "only":  # as upstream: --mode has no effect with --math only
            return
        yield from _minimal_extras() if mode == "minimal" else _full_extras()

    return list(dict.fromkeys(sections()))


def language_of(question: str) -> str:
    return "de" if any(marker in question for marker in C.GERMAN_INDICATORS) else "en"


def generate(mode: str = "full", math: str = "include", seed: int = 42) -> list[dict]:
    """The format-lock records for (mode, math), shuffled with Random(seed)."""
    pairs = build_pairs(mode, math)
    random.Random(seed).shuffle(pairs)
    return [
        make_record(q, a, f"episode_id: format_lock_{i:04d}", language_of(q))
        for i, (q, a) in enumerate(pairs)
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datagen.format_lock",
        description=f"Write <output_dir>/{OUTPUT_NAME} (relative paths are relative to the CWD).",
    )
    parser.add_argument("--output_dir", type=str, default="data/sft_format_lock")
    parser.add_argument("--math", type=str, choices=MATH_MODES, default="include")
    parser.add_argument("--mode", type=str, choices=MODES, default="full")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (upstream: fixed 42)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    records = generate(args.mode, args.math, args.seed)
    write_generator_output(args.output_dir, OUTPUT_NAME, records)


if __name__ == "__main__":
    main()
