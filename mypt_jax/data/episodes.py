"""The episode-indexed on-disk format shared with the upstream (prepare writes it, data reads it).

A split directory holds `tokens.bin` (uint32 LE), `mask.bin` (uint8 0/1, one per token) and
`episodes.idx` (uint64 LE pairs: start within the shard, length). Large splits are cut
into `shard_00000/`, `shard_00001/`, ... subdirectories of the same three files.

The newer upstream's prepare scripts may add two files per shard, one value per token:
`segment_ids.bin` (uint8; written with `--enable_packing`, where each index entry is a block
of several episodes, 1, 2, ... in the block and 0 for its padding) and `mask_weighted.bin`
(float32 loss weights, written with `--weighted_mask`; its loader prefers them to mask.bin).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

TOKENS_FILE = "tokens.bin"
MASK_FILE = "mask.bin"
INDEX_FILE = "episodes.idx"
SEGMENT_IDS_FILE = "segment_ids.bin"
WEIGHTS_FILE = "mask_weighted.bin"
TOKENIZER_STATE_FILE = "tokenizer_state.json"
METADATA_FILE = "dataset_metadata.json"
SPLITS = ("train", "val")
TOKEN_DTYPE = np.dtype("<u4")
MASK_DTYPE = np.dtype("u1")
INDEX_DTYPE = np.dtype("<u8")
SEGMENT_DTYPE = np.dtype("u1")
WEIGHT_DTYPE = np.dtype("<f4")


class DatasetError(ValueError):
    """A dataset directory that is missing files or whose files disagree."""


@dataclasses.dataclass(frozen=True)
class Shard:
    path: Path
    tokens_N: np.ndarray  # uint32 memmap, all episodes concatenated
    mask_N: np.ndarray | None  # uint8 memmap, or None when the shard has no mask.bin
    episodes_Ex2: np.ndarray  # uint64 (start, length), start relative to this shard
    segment_ids_N: np.ndarray | None = None  # uint8 memmap of segment_ids.bin, or None
    weights_N: np.ndarray | None = None  # float32 memmap of mask_weighted.bin, or None

    @property
    def loss_weights_N(self) -> np.ndarray | None:
        """What weights each target's loss: mask_weighted.bin where present (the upstream's
        preference), else mask.bin."""
        return self.weights_N if self.weights_N is not None else self.mask_N


def shard_dir(split_dir: Path, index: int) -> Path:
    return split_dir / f"shard_{index:05d}"


def shard_dirs(split_dir: str | Path) -> list[Path]:
    """The upstream loader's rule: `shard_*` subdirectories if any (sorted), else the split itself."""
    split_dir = Path(split_dir)
    shards = sorted(p for p in split_dir.glob("shard_*") if p.is_dir())
    return shards or [split_dir]


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    if path.stat().st_size % dtype.itemsize:
        raise DatasetError(f"{path}: size {path.stat().st_size} is not a multiple of {dtype.itemsize}")
    return np.memmap(path, dtype=dtype, mode="r")


def _per_token(path: Path, dtype: np.dtype, n_tokens: int) -> np.ndarray | None:
    """An optional file of one `dtype` value per token, or None when absent."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size != n_tokens * dtype.itemsize:
        # A whole number of bytes per token is most likely the right values in another dtype.
        hint = (f", {size // n_tokens} bytes per token" if n_tokens and size % n_tokens == 0
                else "")
        raise DatasetError(
            f"{path}: {size} bytes{hint}; expected {n_tokens * dtype.itemsize}, one {dtype.name} "
            f"per token of the {n_tokens} in {TOKENS_FILE}")
    return _memmap(path, dtype)


def segment_positions(segment_ids_BxT: np.ndarray) -> np.ndarray:
    """Positions as the upstream model numbers them for packed rows: 0 at the start of a row and
    wherever the segment id changes, counting up within a run of one id."""
    T = segment_ids_BxT.shape[-1]
    col_T = np.arange(T)
    starts_BxT = np.ones(segment_ids_BxT.shape, bool)
    starts_BxT[..., 1:] = segment_ids_BxT[..., 1:] != segment_ids_BxT[..., :-1]
    first_BxT = np.maximum.accumulate(np.where(starts_BxT, col_T, 0), axis=-1)
    return (col_T - first_BxT).astype(np.int32)


def read_shard(path: str | Path) -> Shard:
    path = Path(path)
    for name in (TOKENS_FILE, INDEX_FILE):
        if not (path / name).is_file():
            raise DatasetError(f"{path / name}: missing")
    tokens = _memmap(path / TOKENS_FILE, TOKEN_DTYPE)
    episodes = _memmap(path / INDEX_FILE, INDEX_DTYPE)
    if episodes.size % 2:
        raise DatasetError(f"{path / INDEX_FILE}: odd number of uint64 values")
    episodes = episodes.reshape(-1, 2)
    mask = None
    if (path / MASK_FILE).is_file():
        mask = _memmap(path / MASK_FILE, MASK_DTYPE)
        if mask.shape != tokens.shape:
            raise DatasetError(
                f"{path / MASK_FILE}: {mask.size} values but {path / TOKENS_FILE} has {tokens.size}"
            )
    if episodes.size and int((episodes[:, 0] + episodes[:, 1]).max()) > tokens.size:
        raise DatasetError(f"{path / INDEX_FILE}: an episode ends past the {tokens.size} tokens")
    segment_ids = _per_token(path / SEGMENT_IDS_FILE, SEGMENT_DTYPE, tokens.size)
    weights = _per_token(path / WEIGHTS_FILE, WEIGHT_DTYPE, tokens.size)
    return Shard(path, tokens, mask, episodes, segment_ids, weights)


def read_split(split_dir: str | Path) -> list[Shard]:
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split directory missing")
    return [read_shard(d) for d in shard_dirs(split_dir)]


def write_shard(path: str | Path, episodes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Writes (tokens, mask) episodes as one shard; the caller picks a fresh directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(t) for t, _ in episodes], dtype=INDEX_DTYPE)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(INDEX_DTYPE)
    tokens = np.concatenate([t for t, _ in episodes]) if episodes else np.zeros(0)
    mask = np.concatenate([m for _, m in episodes]) if episodes else np.zeros(0)
    tokens.astype(TOKEN_DTYPE).tofile(path / TOKENS_FILE)
    mask.astype(MASK_DTYPE).tofile(path / MASK_FILE)
    np.stack([starts, lengths], axis=1).astype(INDEX_DTYPE).tofile(path / INDEX_FILE)
