"""Episode datasets on disk: the splits, their shards and token map, checked before any batch.

A dataset is what `prepare` writes: `train/` and `val/` splits of episode shards
(episodes.py), `tokenizer_state.json` and `dataset_metadata.json`. `EpisodeSplit` is one split
with its valid-episode list G (episodes of at least `episode_min_tokens`, concatenated over
shards in shard order), which the loader indexes.

Deliberate deviations from the upstream (which warned, or said nothing):
- A missing split is an error naming its path. The upstream silently trained-on/evaluated
  the train split when val was missing (consuming the train stream); `val_fallback="train"`
  opts into reading the train episodes for val, as a separate stream with the same seed.
- `use_loss_mask=True` with a shard lacking mask.bin is an error naming the file (the
  upstream disabled masking).
- A dataset whose token map disagrees with the given tokenizer is an error.
- A top-level tokens.bin next to `shard_*` dirs is ignored, as upstream (its shard-writing
  bug), but with a warning naming the file.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mypt_jax.data import episodes
from mypt_jax.data.episodes import DatasetError, Shard
from mypt_jax.data.paths import read_json
from mypt_jax.data.tokenizer import Tokenizer, TokenizerError

VAL_FALLBACKS = (None, "train")


# ----------------------------------------------------------------------------- dataset files


def _split_present(split_dir: Path) -> bool:
    return (split_dir / episodes.TOKENS_FILE).is_file() or any(
        p.is_dir() for p in split_dir.glob("shard_*")
    )


def resolve_split_dir(dataset_dir: str | Path, split: str, val_fallback: str | None = None) -> Path:
    """The directory a split is read from; refuses a missing split unless a fallback is named."""
    if val_fallback not in VAL_FALLBACKS:
        raise ValueError(f"val_fallback must be one of {VAL_FALLBACKS}, got {val_fallback!r}")
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: dataset directory missing")
    split_dir = dataset_dir / split
    if _split_present(split_dir):
        return split_dir
    what = (
        "directory missing"
        if not split_dir.is_dir()
        else (f"holds neither {episodes.TOKENS_FILE} nor shard_* directories")
    )
    if split == "val" and val_fallback == "train":
        logging.warning("%s: %s; val_fallback='train' reads the train episodes", split_dir, what)
        return resolve_split_dir(dataset_dir, "train")
    hint = " (pass val_fallback='train' to evaluate on train episodes)" if split == "val" else ""
    raise DatasetError(f"{split_dir}: split {split!r} {what}{hint}")


def dataset_tokenizer(dataset_dir: str | Path, tokenizer: Tokenizer | None = None) -> Tokenizer:
    """The dataset's own token map, checked against `tokenizer` when one is given.

    Every special token of the dataset must have the same id in `tokenizer`; extra tags in
    `tokenizer` are fine since they never occur in the data.
    """
    path = Path(dataset_dir) / episodes.TOKENIZER_STATE_FILE
    if not path.is_file():
        if tokenizer is None:
            raise DatasetError(f"{path}: missing, and no tokenizer was given")
        logging.warning("%s: missing; trusting the given %r", path, tokenizer)
        return tokenizer
    try:
        own = Tokenizer.load(path)
    except TokenizerError as e:
        raise DatasetError(str(e)) from None
    if tokenizer is None:
        return own
    wrong = {
        name: (token_id, tokenizer.ids_by_name.get(name))
        for name, token_id in own.ids_by_name.items()
        if tokenizer.ids_by_name.get(name) != token_id
    }
    if wrong:
        detail = ", ".join(
            f"{n}: dataset {a} vs tokenizer {b}" for n, (a, b) in sorted(wrong.items())
        )
        raise DatasetError(f"{path}: token map disagrees with the given tokenizer ({detail})")
    return tokenizer


def check_dataset(
    dataset_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    use_loss_mask: bool = True,
    val_fallback: str | None = None,
) -> dict:
    """Validates splits, files and token map up front; returns dataset_metadata.json or {}."""
    dataset_dir = Path(dataset_dir)
    tok = dataset_tokenizer(dataset_dir, tokenizer)
    for split in episodes.SPLITS:
        split_dir = resolve_split_dir(dataset_dir, split, val_fallback if split == "val" else None)
        for shard in read_shards(split_dir):
            check_shard(shard, tok, use_loss_mask)
    return read_metadata(dataset_dir)


def read_metadata(dataset_dir: str | Path) -> dict:
    """dataset_metadata.json, or {} for a dataset without one."""
    path = Path(dataset_dir) / episodes.METADATA_FILE
    if not path.is_file():
        return {}
    return read_json(path, DatasetError)


def read_shards(split_dir: Path) -> list[Shard]:
    shards = episodes.read_split(split_dir)
    stray = split_dir / episodes.TOKENS_FILE
    if shards[0].path != split_dir and stray.is_file():
        logging.warning(
            "%s: ignored because shard_* directories exist (the upstream loader's rule; its "
            "prepare script wrote the first shard there)",
            stray,
        )
    return shards


def check_shard(shard: Shard, tokenizer: Tokenizer, use_loss_mask: bool) -> None:
    if use_loss_mask and shard.mask_N is None:
        raise DatasetError(
            f"{shard.path / episodes.MASK_FILE}: missing but use_loss_mask is on "
            "(set use_loss_mask=False to train on every position, padding included)"
        )
    if shard.tokens_N.size and int(shard.tokens_N.max()) >= tokenizer.model_vocab_size:
        raise DatasetError(
            f"{shard.path / episodes.TOKENS_FILE}: token id {int(shard.tokens_N.max())} >= "
            f"model_vocab_size {tokenizer.model_vocab_size}"
        )
    if use_loss_mask and shard.mask_N.size and int(shard.mask_N.max()) > 1:
        raise DatasetError(f"{shard.path / episodes.MASK_FILE}: values other than 0/1")


# ----------------------------------------------------------------------------- one split


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeSplit:
    """The shards of one split and its valid-episode list G, flattened for fast lookup."""

    split_dir: Path
    shards: tuple[Shard, ...]
    shard_G: np.ndarray  # int32, the shard of each valid episode, in upstream G order
    start_G: np.ndarray  # int64, its first token within the shard
    length_G: np.ndarray  # int64, its token count
    num_episodes: int  # before the episode_min_tokens filter

    @classmethod
    def load(
        cls,
        dataset_dir: str | Path,
        split: str,
        *,
        tokenizer: Tokenizer | None = None,
        episode_min_tokens: int = 2,
        use_loss_mask: bool = True,
        val_fallback: str | None = None,
    ) -> EpisodeSplit:
        split_dir = resolve_split_dir(dataset_dir, split, val_fallback)
        tok = dataset_tokenizer(dataset_dir, tokenizer)
        shards = read_shards(split_dir)
        for shard in shards:
            check_shard(shard, tok, use_loss_mask)
        shard_G, start_G, length_G = [], [], []
        for s, shard in enumerate(shards):
            valid = shard.episodes_Ex2[:, 1] >= episode_min_tokens
            shard_G.append(np.full(int(valid.sum()), s, np.int32))
            start_G.append(shard.episodes_Ex2[valid, 0].astype(np.int64))
            length_G.append(shard.episodes_Ex2[valid, 1].astype(np.int64))
        out = cls(
            split_dir=split_dir,
            shards=tuple(shards),
            shard_G=np.concatenate(shard_G),
            start_G=np.concatenate(start_G),
            length_G=np.concatenate(length_G),
            num_episodes=sum(len(s.episodes_Ex2) for s in shards),
        )
        if not len(out):
            raise DatasetError(
                f"{split_dir / episodes.INDEX_FILE}: no episode has >= episode_min_tokens="
                f"{episode_min_tokens} tokens ({out.num_episodes} episodes in {len(shards)} shard(s))"
            )
        return out

    def __len__(self) -> int:
        return len(self.length_G)

    def stats(self, block_size: int) -> dict[str, Any]:
        tokens = int(self.length_G.sum())
        masked = sum(int(s.mask_N.sum()) for s in self.shards if s.mask_N is not None)
        all_tokens = sum(int(s.tokens_N.size) for s in self.shards)
        pct = np.percentile(self.length_G, [0, 50, 90, 99, 100]).tolist()
        return {
            "split_dir": str(self.split_dir),
            "shards": len(self.shards),
            "episodes": self.num_episodes,
            "valid_episodes": len(self),
            "valid_tokens": tokens,
            "mask_ratio": masked / all_tokens if all_tokens else 0.0,
            "length_percentiles": dict(zip(("min", "p50", "p90", "p99", "max"), pct, strict=True)),
            "truncated_episodes": int((self.length_G > block_size + 1).sum()),
        }
