"""Throughput of `mypt_jax.prepare.prepare` (records/s, tokens/s) on the Phase 3a-2 mixed dataset.

    python benchmarks/bench_prepare.py                 # builds the 3a-2 mix with datagen first
    python benchmarks/bench_prepare.py --input X.jsonl # any chat JSONL

Without --input the 3a-2 mix is generated in a temporary directory with the seed doc's commands
(format_lock full + math, echo without gibberish capped at 2500, mixed and shuffled). Prints one
JSON object; timings are wall clock of `prepare()` only, progress bar off, best of --repeat.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mypt_jax.data.prepare import prepare  # noqa: E402


def _run(module: str, *args: str) -> None:
    cmd = [sys.executable, "-m", module, *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"bench_prepare: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")


def build_3a2_mix(work: Path) -> Path:
    """The seed doc's Phase 3a-2 data: format_lock full (math included) + echo beta, shuffled."""
    _run(
        "datagen.format_lock",
        "--mode",
        "full",
        "--math",
        "include",
        "--output_dir",
        str(work / "fl"),
    )
    _run(
        "datagen.echo", "--gibberish", "exclude", "--max_examples", "2500",
        "--output_dir", str(work / "echo"),
    )  # fmt: skip
    mix = work / "phase3a2_mixed.jsonl"
    _run(
        "datagen.mix", "--inputs", str(work / "fl" / "mypt_format_lock_v1.jsonl"),
        str(work / "echo" / "mypt_echo_diverse.jsonl"), "--shuffle", "--output", str(mix),
    )  # fmt: skip
    return mix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="chat JSONL (default: build the 3a-2 mix)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    parser.add_argument("--tokens_per_shard", type=int, default=50_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_prepare-") as tmp:
        work = Path(tmp)
        source = args.input or build_3a2_mix(work)
        times, meta = [], {}
        for i in range(args.repeat):
            start = time.perf_counter()
            meta = prepare(
                source, work / f"out{i}", tokens_per_shard=args.tokens_per_shard, progress=False
            )
            times.append(time.perf_counter() - start)

    seconds = min(times)
    tokens = meta["num_train_tokens"] + meta["num_val_tokens"]
    print(
        json.dumps(
            {
                "benchmark": "prepare",
                "input": str(args.input) if args.input else "generated 3a-2 mix",
                "records": meta["num_conversations"],
                "tokens": tokens,
                "seconds": round(seconds, 4),
                "seconds_all_runs": [round(t, 4) for t in times],
                "records_per_s": round(meta["num_conversations"] / seconds, 1),
                "tokens_per_s": round(tokens / seconds, 1),
                "python": platform.python_version(),
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
