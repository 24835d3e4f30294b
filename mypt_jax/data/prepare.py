"""Chat JSONL -> episode-indexed SFT dataset (train/ and val/ token, mask and index files).

    python -m mypt_jax.prepare --input X.jsonl --output_dir D --val_split 0.1

For the same JSONL the `train/` and `val/` files are byte-identical to the upstream's
`scripts/prepare_chat_sft.py`: the same serialization (fixed system prompt, tags, one trailing
eot), special-aware GPT-2 BPE, split (`np.random.seed(seed)` permutation, first
`int(n * val_split)` originals to val, file order kept within each split) and loss mask
(`<myPT_assistant>` 0, then assistant tokens 1, `</myPT_assistant>` 1, `<myPT_eot>` 1).

Deliberate differences from the upstream:
- Stricter input. Each non-blank line must be a JSON object whose `messages` is a list of
  `{"role": "user"|"assistant", "content": str}` objects with at least one assistant turn.
  The upstream skips malformed lines with a warning, drops unknown roles, defaults a missing
  role to "user" and missing content to ""; here each of these fails the run with file:line
  and the reason, or, with `skip_invalid`, skips the whole record and counts it. Blank lines
  are skipped as upstream; a file with no records is an error. `system` and `context` are
  ignored as upstream (the system prompt is always `chat.SYSTEM_PROMPT`).
- Sharding. The upstream writes its first shard to `split/` and later ones to
  `split/shard_00001/...`, so its loader (which prefers `shard_*` directories) silently
  loses the first shard. When a split needs more than one shard, every shard goes to
  `split/shard_NNNNN/` here and nothing to `split/` itself, so both loaders see every
  episode. Where the upstream is not buggy (one shard) the layout is the same as its own,
  including its choice of `shard_00000/` for a lone shard that is already full.
- An empty val split (val_split 0 or few records) leaves `val/` an empty directory, as
  upstream, with `num_val_episodes` 0 in the metadata; no zero-byte files are written
  because the upstream loader cannot memory-map them.
- Atomic output. Everything is built in a temporary directory beside `output_dir` and
  renamed into place, so a failed run leaves an existing dataset untouched and nothing
  half-written behind. An existing non-empty `output_dir` that is not a dataset is refused.
- `dataset_metadata.json` carries the upstream fields in the upstream order plus `seed`,
  `skipped_invalid` and `source_file`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from mypt_jax.data import episodes
from mypt_jax.data.chat import ROLES, serialize_conversation, system_block
from mypt_jax.data.records import Messages, PrepareError, read_records
from mypt_jax.data.tokenizer import MODEL_VOCAB_SIZE, Tokenizer, TokenizerError

SCHEMA = "episode_indexed_sft_v1"
DEFAULT_TOKENS_PER_SHARD = 50_000_000
_PROGRESS_MIN_RECORDS = 5000  # below this a bar is only shown on a terminal

def read_conversations(path: str | os.PathLike, skip_invalid: bool = False) -> list[Messages]:
    """The validated `messages` of every record, in file order; errors name file:line."""
    return read_records(path, skip_invalid)[0]


# ----- one conversation -> tokens and loss mask -----


def loss_mask(token_ids: Sequence[int] | np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """The upstream token-level mask: 1 on assistant content, its closing tag and every eot."""
    ids_N = np.asarray(token_ids, dtype=np.int64)
    return _episode_masks(ids_N, np.array([ids_N.size]), tokenizer)


def _episode_masks(ids_N: np.ndarray, lengths_E: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """`loss_mask` of each of E concatenated episodes at once (the state restarts per episode)."""
    if ids_N.size == 0:
        return np.zeros(0, np.uint8)
    is_open_N = ids_N == tokenizer.assistant_open_id
    is_close_N = ids_N == tokenizer.assistant_close_id
    # in_asst before token i is set by the latest open/close before i in the same episode.
    positions_N = np.arange(ids_N.size)
    last_event_N = np.maximum.accumulate(np.where(is_open_N | is_close_N, positions_N, -1))
    last_before_N = np.concatenate([[-1], last_event_N[:-1]])
    episode_start_N = np.repeat(np.cumsum(lengths_E) - lengths_E, lengths_E)
    in_asst_N = (last_before_N >= episode_start_N) & is_open_N[np.maximum(last_before_N, 0)]
    mask_N = (in_asst_N & ~is_open_N) | is_close_N | (ids_N == tokenizer.eot_id)
    return mask_N.astype(np.uint8)


class EpisodeEncoder:
    """Encodes conversations exactly as `tokenizer.encode(serialize_conversation(m))` does.

    The tags we add never merge with neighbouring text (every tag string has its only '<'
    first and its only '>' last, so no tag match can straddle a tag boundary), hence each
    content can be encoded on its own and the constant system block only once. Repeated
    contents (templated prompts) are served from a small cache.
    """

    def __init__(self, tokenizer: Tokenizer, cache_size: int = 1 << 16):
        self.tokenizer = tokenizer
        self._system_ids = tokenizer.encode(system_block())
        self._role_ids = {
            role: (tokenizer.id_of(f"myPT_{role}_open"), tokenizer.id_of(f"myPT_{role}_close"))
            for role in ROLES
        }
        self._encode_content = functools.lru_cache(maxsize=cache_size)(
            lambda text: tokenizer.encode(text)
        )
        # The per-part shortcut needs the tag shape argued above; any other map is encoded whole.
        self._by_parts = all(
            t.count("<") == t.count(">") == 1 and t[0] == "<" and t[-1] == ">"
            for t in tokenizer.id_by_string
        )

    def token_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        if not self._by_parts:
            return self.tokenizer.encode(serialize_conversation(messages))
        ids = list(self._system_ids)
        for message in messages:
            open_id, close_id = self._role_ids[message["role"]]
            ids.append(open_id)
            ids.extend(self._encode_content(message["content"]))
            ids.append(close_id)
        ids.append(self.tokenizer.eot_id)
        return ids

    def encode_all(
        self, conversations: Sequence[Messages], progress: bool = False, chunk: int = 4096
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(tokens uint32, mask uint8) per conversation; masks are computed a chunk at a time."""
        encoded: list[tuple[np.ndarray, np.ndarray]] = []
        with _progress(len(conversations), progress) as bar:
            for first in range(0, len(conversations), chunk):
                ids: list[int] = []
                lengths = []
                for messages in conversations[first : first + chunk]:
                    episode_ids = self.token_ids(messages)
                    ids.extend(episode_ids)
                    lengths.append(len(episode_ids))
                ids_N = np.array(ids, dtype=np.uint32)
                lengths_E = np.array(lengths, dtype=np.int64)
                mask_N = _episode_masks(ids_N, lengths_E, self.tokenizer)
                cuts = np.cumsum(lengths_E)[:-1]
                encoded.extend(zip(np.split(ids_N, cuts), np.split(mask_N, cuts), strict=True))
                bar.update(len(lengths))
        return encoded

    def __call__(self, messages: Sequence[Mapping[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        tokens_N = np.array(self.token_ids(messages), dtype=np.uint32)
        return tokens_N, loss_mask(tokens_N, self.tokenizer)


def encode_episode(
    messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens uint32, loss mask uint8) of one validated conversation."""
    return EpisodeEncoder(tokenizer, cache_size=0)(messages)


# ----- split and shards -----


def split_indices(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) original indices, each ascending; the upstream's seeded permutation rule."""
    # RandomState(seed).permutation draws the same as np.random.seed(seed); np.random.permutation,
    # without touching the global generator.
    perm_N = np.random.RandomState(seed).permutation(n)
    is_val_N = np.zeros(n, dtype=bool)
    is_val_N[perm_N[: int(n * val_split)]] = True
    return np.flatnonzero(~is_val_N), np.flatnonzero(is_val_N)


def plan_shards(lengths: Sequence[int], tokens_per_shard: int) -> list[range]:
    """Episode ranges per shard, cut as upstream: before an episode that would overflow a non-empty shard."""
    shards: list[range] = []
    start, size = 0, 0
    for i, length in enumerate(lengths):
        if size and size + length > tokens_per_shard:
            shards.append(range(start, i))
            start, size = i, 0
        size += length
    if start < len(lengths):
        shards.append(range(start, len(lengths)))
    return shards


def _write_split(
    split_dir: Path, encoded: list[tuple[np.ndarray, np.ndarray]], tokens_per_shard: int
) -> int:
    """Writes one split's shards; returns how many."""
    split_dir.mkdir()
    shards = plan_shards([len(t) for t, _ in encoded], tokens_per_shard)
    if not shards:
        return 0
    lone_and_unfilled = len(shards) == 1 and sum(len(t) for t, _ in encoded) < tokens_per_shard
    for index, shard in enumerate(shards):
        path = split_dir if lone_and_unfilled else episodes.shard_dir(split_dir, index)
        episodes.write_shard(path, [encoded[i] for i in shard])
    return len(shards)


# ----- the output directory, replaced atomically -----


def _is_dataset(path: Path) -> bool:
    return any((path / name).exists() for name in (episodes.METADATA_FILE, "train"))


def _check_output_dir(output_dir: Path, input_path: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise PrepareError(f"{output_dir}: output exists and is not a directory")
    if output_dir.resolve() in input_path.resolve().parents:
        raise PrepareError(f"{output_dir}: output directory contains the input {input_path}")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not _is_dataset(output_dir):
        raise PrepareError(
            f"{output_dir}: output directory is not empty and holds no dataset "
            f"(no {episodes.METADATA_FILE} or train/); refusing to replace it"
        )


@contextlib.contextmanager
def _staging_dir(output_dir: Path) -> Iterator[Path]:
    """A fresh directory beside output_dir; on success it replaces output_dir, else it vanishes."""
    parent = output_dir.parent
    missing = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=parent))
    except OSError as e:
        _remove_created(missing)
        raise PrepareError(
            f"{output_dir}: cannot create the output directory ({e.strerror})"
        ) from None
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; give the usual permissions
        _swap_in(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(missing)
        raise


def _remove_created(dirs: list[Path]) -> None:
    for path in dirs:  # deepest first
        with contextlib.suppress(OSError):
            path.rmdir()


def _swap_in(staging: Path, output_dir: Path) -> None:
    if not output_dir.exists() or not any(output_dir.iterdir()):
        os.replace(staging, output_dir)  # rename(2) may replace an empty directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    os.replace(output_dir, old)  # `old` is empty, so this rename replaces it
    try:
        os.replace(staging, output_dir)
    except BaseException:
        os.replace(old, output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----- the whole preparation -----


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    on_terminal = sys.stderr.isatty()
    show = enabled and (on_terminal or total >= _PROGRESS_MIN_RECORDS)
    return tqdm(
        total=total,
        desc="tokenizing",
        unit="rec",
        disable=not show,
        file=sys.stderr,
        mininterval=0.1 if on_terminal else 10.0,
    )


def _mask_ratio(encoded: list[tuple[np.ndarray, np.ndarray]]) -> float:
    count = sum(len(m) for _, m in encoded)
    # The upstream writes int 0 for an empty split, a float otherwise.
    return sum(int(m.sum()) for _, m in encoded) / count if count else 0


def prepare(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    val_split: float = 0.1,
    tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD,
    seed: int = 42,
    skip_invalid: bool = False,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
) -> dict:
    """Prepares `output_dir` from a chat JSONL; returns the dataset metadata written there."""
    if not 0.0 <= val_split < 1.0:
        raise PrepareError(f"val_split must be in [0, 1), got {val_split}")
    if tokens_per_shard < 1:
        raise PrepareError(f"tokens_per_shard must be positive, got {tokens_per_shard}")
    if not 0 <= seed < 2**32:
        raise PrepareError(f"seed must be in [0, 2**32), got {seed}")
    tokenizer = tokenizer or Tokenizer()
    input_path = Path(input_path)
    # A symlinked output is replaced at its target, not turned into a directory of its own.
    output_dir = Path(output_dir).resolve() if Path(output_dir).is_symlink() else Path(output_dir)
    _check_output_dir(output_dir, input_path)

    conversations, skipped = read_records(input_path, skip_invalid)
    train_idx, val_idx = split_indices(len(conversations), val_split, seed)
    encoded = EpisodeEncoder(tokenizer).encode_all(conversations, progress)
    splits = {"train": [encoded[i] for i in train_idx], "val": [encoded[i] for i in val_idx]}

    metadata = {
        "schema": SCHEMA,
        "has_loss_mask": True,
        "num_conversations": len(conversations),
        "num_train_episodes": len(splits["train"]),
        "num_val_episodes": len(splits["val"]),
        "num_train_tokens": sum(len(t) for t, _ in splits["train"]),
        "num_val_tokens": sum(len(t) for t, _ in splits["val"]),
        "num_train_shards": 0,
        "num_val_shards": 0,
        "train_mask_ratio": _mask_ratio(splits["train"]),
        "val_mask_ratio": _mask_ratio(splits["val"]),
        "tokenization": "gpt2",
        "vocab_size": tokenizer.model_vocab_size,
        "tokens_per_shard": tokens_per_shard,
        "val_split": val_split,
        "special_tokens_used": list(tokenizer.ids_by_name),
        # Ours, after the upstream's fields.
        "seed": seed,
        "skipped_invalid": skipped,
        "source_file": str(input_path),
    }
    with _staging_dir(output_dir) as staging:
        try:
            for split, encoded_split in splits.items():
                metadata[f"num_{split}_shards"] = _write_split(
                    staging / split, encoded_split, tokens_per_shard
                )
            # indent=2 and ASCII escapes, as the upstream's json.dump writes these two files.
            (staging / episodes.TOKENIZER_STATE_FILE).write_text(
                json.dumps(tokenizer.get_state(), indent=2), encoding="utf-8"
            )
            (staging / episodes.METADATA_FILE).write_text(
                json.dumps(metadata, indent=2), encoding="utf-8"
            )
        except OSError as e:
            raise PrepareError(f"{output_dir}: writing the dataset failed ({e})") from None
    return metadata


# ----- CLI -----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mypt_jax.prepare",
        description="Prepare an episode-indexed SFT dataset (train/, val/) from chat JSONL.",
    )
    parser.add_argument(
        "--input", required=True, help="chat JSONL, one {'messages': [...]} per line"
    )
    parser.add_argument(
        "--output_dir", required=True, help="dataset directory (replaced atomically)"
    )
    parser.add_argument("--val_split", type=float, default=0.1, help="fraction of records for val")
    parser.add_argument("--tokens_per_shard", type=int, default=DEFAULT_TOKENS_PER_SHARD)
    parser.add_argument("--seed", type=int, default=42, help="split seed (numpy legacy RNG)")
    parser.add_argument("--tokenization", default="gpt2", help="only 'gpt2' is supported")
    parser.add_argument("--vocab_size", type=int, default=MODEL_VOCAB_SIZE, help="model vocab size")
    parser.add_argument("--skip_invalid", action="store_true", help="skip and count bad records")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each skipped record")
    return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tokenization != "gpt2":
        parser.error(f"--tokenization {args.tokenization!r} is not supported; only 'gpt2' is")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    start = time.perf_counter()
    try:
        tokenizer = Tokenizer(model_vocab_size=args.vocab_size)
        meta = prepare(
            args.input,
            args.output_dir,
            val_split=args.val_split,
            tokens_per_shard=args.tokens_per_shard,
            seed=args.seed,
            skip_invalid=args.skip_invalid,
            tokenizer=tokenizer,
            progress=not args.no_progress,
        )
    except (PrepareError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"prepared {args.output_dir} from {args.input} in {seconds:.1f} s")
    print(f"  conversations: {meta['num_conversations']:,}", end="")
    print(f" ({meta['skipped_invalid']:,} invalid skipped)" if args.skip_invalid else "")
    for split in episodes.SPLITS:
        print(
            f"  {split}: {meta[f'num_{split}_episodes']:,} episodes, "
            f"{meta[f'num_{split}_tokens']:,} tokens, {meta[f'num_{split}_shards']} shard(s), "
            f"mask ratio {meta[f'{split}_mask_ratio']:.1%}"
        )
    return 0
