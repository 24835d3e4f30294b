"""Train-iterator throughput on a synthetic Phase 3a-sized dataset; prints JSON.

    .venv/bin/python -m benchmarks.bench_loader [--episodes 15000 --batch_size 16 --block_size 512]

Episode lengths are log-normal around ~150 tokens with a tail past block_size + 1, roughly the
3a-2 mix (short chats behind a 19-token system block). Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

from mypt_jax.data import episodes
from mypt_jax.data import loader as data
from mypt_jax.data.tokenizer import Tokenizer


def make_dataset(root: Path, num_episodes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(150), 0.6, size=num_episodes), 25, 2000).astype(int)
    eps = []
    for n in lengths:
        tokens = rng.integers(0, 50257, size=n, dtype=np.uint32)
        mask = np.zeros(n, np.uint8)
        mask[n // 2 :] = 1
        eps.append((tokens, mask))
    episodes.write_shard(root / "train", eps)
    Tokenizer().save(root / episodes.TOKENIZER_STATE_FILE)
    return {
        "episodes": num_episodes,
        "tokens": int(lengths.sum()),
        "mean_len": float(lengths.mean()),
    }


def measure(root: Path, args, **kw) -> dict:
    t0 = time.perf_counter()
    iterator = data.make_iterator(
        root,
        "train",
        batch_size=args.batch_size,
        block_size=args.block_size,
        epoch_seed=1337,
        process_index=0,
        process_count=1,
        **kw,
    )
    next(iterator)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.num_batches):
        next(iterator)
    elapsed = time.perf_counter() - t0
    iterator.close()
    return {
        "setup_and_first_batch_s": round(setup_s, 4),
        "batches_per_s": round(args.num_batches / elapsed, 1),
        "tokens_per_s": round(args.num_batches * args.batch_size * args.block_size / elapsed),
        "us_per_batch": round(1e6 * elapsed / args.num_batches, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=15_000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--num_batches", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = make_dataset(root, args.episodes)
        results = {
            "epoch": measure(root, args),
            "random": measure(root, args, mode="random"),
            "epoch_prefetch_2threads": measure(
                root, args, read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
            ),
        }
    print(
        json.dumps(
            {
                "benchmark": "loader",
                "machine": platform.processor() or platform.machine(),
                "dataset": dataset,
                "batch_size": args.batch_size,
                "block_size": args.block_size,
                "num_batches": args.num_batches,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
