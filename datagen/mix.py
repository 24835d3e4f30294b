"""Mix SFT JSONL files, with the upstream `mix_sft_jsonl.py` semantics, plus a replay share.

Per input `path[:RATIO]` (the ratio is split off at the LAST colon, and only when what follows
parses as a float, so `C:/data/x.jsonl` still works), each sampled with its own fresh
`random.Random(seed)`:
* ratio 1: all records in file order;
* ratio > 1: int(ratio) full copies in order, then `rng.sample(records, int(N * frac))`;
* ratio < 1: `rng.sample(records, max(1, int(N * ratio)))`; a fraction of THAT FILE.
Each record without `mix_source` gets one (last key): the file stem, or `parent/stem` when two
inputs share a stem (e.g. gamma and beta are both `mypt_echo_diverse`), or `...#k` (k = input
position, 1-based) if even that collides. An existing `mix_source` is kept, so chained mixes keep
the original source. Sources are concatenated in order; `--shuffle` shuffles with
`random.Random(seed + 1)`. A `<output minus .jsonl>.mix_meta.json` sidecar records what was done.

Replay share (ours): `--replay_share F` says "every input after the first is replay, and the
replay makes up fraction F of the OUTPUT". The first input is taken whole (N0 records); the
replay inputs together contribute round(N0 * F / (1 - F)) records, split across them in
proportion to their sizes (largest remainder), each drawn with its own Random(seed): a sample
without repetition, or full copies plus a sample when a file is smaller than its share. The seed
doc's "Mix with 15% replay from beta" is `--replay_share 0.15`; its literal commands (no ratios)
are a 100% + 100% concatenation.

Differences from the upstream: a relative `--output` is relative to the CWD (upstream: the repo
root), inputs are not looked up in the repo root, malformed lines fail the run (upstream: skipped
with a warning) unless `--skip_invalid`, and the output is written atomically.

    python -m datagen.mix --inputs a.jsonl b.jsonl --output mixed.jsonl --shuffle
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datagen.records import DatagenError, language_split, read_jsonl, write_jsonl, write_text_atomic


@dataclass(frozen=True)
class Source:
    """One input of a mix: its records, the tag its records get, and how many to take."""

    records: list[dict]
    mix_source: str
    ratio: float | None = 1.0  # upstream ratio semantics; None when `count` is used
    count: int | None = None  # exact number of records (replay share); full copies + sample


def parse_input(spec: str) -> tuple[str, float]:
    """`path` or `path:RATIO` -> (path, ratio); a non-float tail after the last colon is path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            ratio = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(ratio) or ratio <= 0:
            raise DatagenError(f"{spec}: ratio must be a positive number, got {tail!r}")
        return head, ratio
    return spec, 1.0


def mix_source_names(paths: Sequence[str | Path]) -> list[str]:
    """Distinct tags: the stem if unique, else `parent/stem`, else `parent/stem#k`."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    names = [
        stem if stems.count(stem) == 1 else f"{p.parent.name}/{stem}" if p.parent.name else stem
        for p, stem in zip(paths, stems, strict=True)
    ]
    return [
        name if names.count(name) == 1 else f"{name}#{k}" for k, name in enumerate(names, start=1)
    ]


def _take(records: list[dict], count: int, rng: random.Random) -> list[dict]:
    copies, rest = divmod(count, len(records))
    return records * copies + rng.sample(records, rest)


def sample_source(records: list[dict], ratio: float, seed: int) -> list[dict]:
    """The upstream's per-input sampling for one ratio, with a fresh Random(seed)."""
    rng = random.Random(seed)
    if ratio == 1.0:
        return list(records)
    if ratio > 1.0:
        whole = int(ratio)
        return records * whole + rng.sample(records, int(len(records) * (ratio - whole)))
    return rng.sample(records, max(1, int(len(records) * ratio)))


def replay_counts(first_size: int, replay_sizes: Sequence[int], share: float) -> list[int]:
    """Records per replay input so that replay is `share` of the output (largest remainder split)."""
    if not 0.0 < share < 1.0:
        raise DatagenError(f"--replay_share must be strictly between 0 and 1, got {share}")
    total = round(first_size * share / (1.0 - share))
    size_sum = sum(replay_sizes)
    exact = [total * size / size_sum for size in replay_sizes]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda k: (counts[k] - exact[k], k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


def mix(sources: Sequence[Source], seed: int = 42, shuffle: bool = False) -> list[dict]:
    """Sample every source, tag records with `mix_source`, concatenate, optionally shuffle."""
    mixed: list[dict] = []
    for source in sources:
        if not source.records:
            raise DatagenError(f"{source.mix_source}: no records to mix")
        if source.count is not None:
            taken = _take(source.records, source.count, random.Random(seed))
        else:
            taken = sample_source(source.records, source.ratio, seed)
        for record in taken:
            if "mix_source" not in record:
                record = {**record, "mix_source": source.mix_source}
            mixed.append(record)
    if shuffle:
        random.Random(seed + 1).shuffle(mixed)
    return mixed


def meta_path(output: Path) -> Path:
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.mix_meta.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datagen.mix",
        description="Mix SFT JSONL files (relative paths are relative to the CWD).",
        epilog=(
            "Replay: --replay_share F makes every input after the first 'replay' that together "
            "forms fraction F of the output (first input taken whole). The seed doc's "
            "'15% replay' is --replay_share 0.15. Without it, inputs take path:RATIO, where "
            "RATIO is a fraction of that file (upstream semantics), default 1."
        ),
    )
    parser.add_argument("--inputs", nargs="+", required=True, help="path or path:RATIO, in order")
    parser.add_argument("--output", type=str, required=True, help="output JSONL")
    parser.add_argument("--shuffle", action="store_true", help="shuffle with Random(seed + 1)")
    parser.add_argument("--seed", type=int, default=42, help="seed for sampling and shuffling")
    parser.add_argument(
        "--replay_share",
        type=float,
        default=None,
        help="fraction (0, 1) of the output made of the inputs after the first",
    )
    parser.add_argument(
        "--skip_invalid",
        action="store_true",
        help="skip malformed lines (and report how many) instead of failing",
    )
    return parser


def run(args: argparse.Namespace) -> list[dict]:
    """Load, mix and write as the parsed flags say; returns the mixed records."""
    specs = [parse_input(spec) for spec in args.inputs]
    if args.replay_share is not None:
        if any(path != spec for (path, _), spec in zip(specs, args.inputs, strict=True)):
            raise DatagenError("--replay_share cannot be combined with path:RATIO inputs")
        if len(specs) < 2:
            raise DatagenError("--replay_share needs at least two inputs (the first is not replay)")
        if not 0.0 < args.replay_share < 1.0:
            raise DatagenError(
                f"--replay_share must be strictly between 0 and 1, got {args.replay_share}"
            )

    loaded = []
    for path, _ in specs:
        records, skipped = read_jsonl(path, skip_invalid=args.skip_invalid)
        if skipped:
            print(f"warning: {path}: skipped {skipped} invalid lines")
        loaded.append(records)

    names = mix_source_names([path for path, _ in specs])
    if args.replay_share is None:
        sources = [
            Source(records, name, ratio)
            for records, name, (_, ratio) in zip(loaded, names, specs, strict=True)
        ]
    else:
        counts = replay_counts(len(loaded[0]), [len(r) for r in loaded[1:]], args.replay_share)
        sources = [Source(loaded[0], names[0])] + [
            Source(records, name, None, count)
            for records, name, count in zip(loaded[1:], names[1:], counts, strict=True)
        ]
    mixed = mix(sources, seed=args.seed, shuffle=args.shuffle)

    meta = {
        "seed": args.seed,
        "shuffled": args.shuffle,
        "replay_share": args.replay_share,
        "total_episodes": len(mixed),
        "sources": [
            {
                "path": path,
                "ratio": source.ratio,
                "records_in_file": len(source.records),
                "sampled": sampled_count(source),
                "share": round(sampled_count(source) / len(mixed), 4),
                "mix_source": source.mix_source,
            }
            for (path, _), source in zip(specs, sources, strict=True)
        ],
    }
    output = Path(args.output)
    write_jsonl(output, mixed)
    write_text_atomic(meta_path(output), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    print(f"wrote {len(mixed)} records to {output} ({language_split(mixed)})")
    for entry in meta["sources"]:
        print(
            f"  {entry['mix_source']}: {entry['sampled']} ({entry['share']:.1%}) from {entry['path']}"
        )
    return mixed


def sampled_count(source: Source) -> int:
    """How many records `mix` takes from a source."""
    if source.count is not None:
        return source.count
    n, ratio = len(source.records), source.ratio
    if ratio == 1.0:
        return n
    if ratio > 1.0:
        return n * int(ratio) + int(n * (ratio - int(ratio)))
    return max(1, int(n * ratio))


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DatagenError as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
