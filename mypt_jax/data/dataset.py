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

The newer upstream's optional files (episodes.py) are read with its meaning: a row of a
shard with segment_ids.bin keeps attention inside each segment and restarts positions at
every change of id; mask_weighted.bin replaces mask.bin as the per-target loss weight. What
its loader cannot give a meaning to is refused, naming the file: segment_ids.bin in only
some shards of a split (its batches would mix rows with and without segment ids), or with
`use_loss_mask=False` (it then drops the ids, letting packed episodes see each other);
negative or non-finite weights (the trained-position head keeps positive weights only).
With `use_loss_mask=False` mask_weighted.bin goes unread like mask.bin, with a warning.
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
    pack_episodes: bool = False,
) -> dict:
    """Validates splits, files and token map up front; returns dataset_metadata.json or {}.

    `pack_episodes=True` refuses a dataset packed at prepare time (its rows already hold
    several episodes each, and our packing would merge their segments).
    """
    dataset_dir = Path(dataset_dir)
    tok = dataset_tokenizer(dataset_dir, tokenizer)
    for split in episodes.SPLITS:
        split_dir = resolve_split_dir(dataset_dir, split, val_fallback if split == "val" else None)
        shards = read_shards(split_dir)
        check_shards(shards, tok, use_loss_mask)
        if pack_episodes and shards[0].segment_ids_N is not None:
            raise DatasetError(
                f"{shards[0].path / episodes.SEGMENT_IDS_FILE}: the episodes were packed at "
                "prepare time, so pack_episodes cannot pack them again; set pack_episodes=False")
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


def check_shards(shards: list[Shard], tokenizer: Tokenizer, use_loss_mask: bool) -> None:
    """Every shard of one split, and that they agree on segment_ids.bin."""
    for shard in shards:
        check_shard(shard, tokenizer, use_loss_mask)
    segmented = [s.segment_ids_N is not None for s in shards]
    if any(segmented) and not all(segmented):
        have, lack = (shards[segmented.index(v)].path for v in (True, False))
        raise DatasetError(
            f"{lack / episodes.SEGMENT_IDS_FILE}: missing, but {have / episodes.SEGMENT_IDS_FILE} "
            "exists; every shard of a split needs one, or none")


def check_shard(shard: Shard, tokenizer: Tokenizer, use_loss_mask: bool) -> None:
    weights = shard.loss_weights_N
    if use_loss_mask and weights is None:
        raise DatasetError(
            f"{shard.path / episodes.MASK_FILE}: missing but use_loss_mask is on, and there is "
            f"no {episodes.WEIGHTS_FILE} either "
            "(set use_loss_mask=False to train on every position, padding included)"
        )
    if shard.tokens_N.size and int(shard.tokens_N.max()) >= tokenizer.model_vocab_size:
        raise DatasetError(
            f"{shard.path / episodes.TOKENS_FILE}: token id {int(shard.tokens_N.max())} >= "
            f"model_vocab_size {tokenizer.model_vocab_size}"
        )
    if shard.segment_ids_N is not None and not use_loss_mask:
        raise DatasetError(
            f"{shard.path / episodes.SEGMENT_IDS_FILE}: episodes packed at prepare time need "
            "use_loss_mask=True (without it the upstream drops the segment ids and packed "
            "episodes attend to each other)")
    if shard.weights_N is not None:
        _check_weights(shard, use_loss_mask)
    elif use_loss_mask and shard.mask_N.size and int(shard.mask_N.max()) > 1:
        raise DatasetError(f"{shard.path / episodes.MASK_FILE}: values other than 0/1")


def _check_weights(shard: Shard, use_loss_mask: bool) -> None:
    path = shard.path / episodes.WEIGHTS_FILE
    if not use_loss_mask:
        logging.warning("%s: not read, as use_loss_mask is off (every position is trained "
                        "with weight 1, as the upstream does)", path)
        return
    w_N = shard.weights_N
    bad_N = ~np.isfinite(w_N) | (w_N < 0)
    if bad_N.any():
        i = int(np.argmax(bad_N))
        raise DatasetError(f"{path}: weight {float(w_N[i])} at token {i}; expected finite "
                           "weights >= 0")
    if shard.mask_N is not None:
        differ = int(np.count_nonzero((shard.mask_N > 0) != (w_N > 0)))
        if differ:
            logging.warning("%s: %d tokens trained in one file and not in the other; %s is "
                            "used (the upstream's preference)", shard.path / episodes.MASK_FILE,
                            differ, path)


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
        check_shards(shards, tok, use_loss_mask)
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

    @property
    def segmented(self) -> bool:
        """Packed at prepare time: every shard has segment_ids.bin (check_shards)."""
        return self.shards[0].segment_ids_N is not None

    def stats(self, block_size: int) -> dict[str, Any]:
        tokens = int(self.length_G.sum())
        masked = sum(int(np.count_nonzero(s.loss_weights_N)) for s in self.shards
                     if s.loss_weights_N is not None)
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
            "packed_at_prepare": self.segmented,
            "weighted_shards": sum(s.weights_N is not None for s in self.shards),
        }
