"""What a checkpoint must be resumed with: the same dataset bytes and the same batch stream.

Exact resume means the rerun reads the batches the interrupted run would have read. The
stream is fixed by the dataset's files and by `STREAM_FIELDS`; both are recorded in every
checkpoint (`meta["data_identity"]`) and compared on resume. A difference is refused, naming
the file or field and both values, unless `allow_data_change=True` says it is on purpose.

The fingerprint hashes what the loader reads, per file: the episode index, the loss mask (and
the newer upstream's `mask_weighted.bin` and `segment_ids.bin`), the token map and the
metadata whole, and `tokens.bin` whole up to `WHOLE_FILE_LIMIT` (larger
token files by their size and `SAMPLES` evenly spaced blocks). It takes well under a second
on the Phase 3a datasets, and no file's modification time enters it, so two hosts' copies of
one dataset agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mypt_jax.data import episodes
from mypt_jax.data.inspect import LOADER_CONFIG_FIELDS

# The config fields the loader reads, and the loop semantics that decide which of its
# batches are trained on (dc62a0c evals take some: training/setup/semantics.py).
STREAM_FIELDS = (*LOADER_CONFIG_FIELDS, "upstream_semantics")
SPLITS = ("train", "val")
SHARD_FILES = (episodes.TOKENS_FILE, episodes.MASK_FILE, episodes.INDEX_FILE,
               episodes.SEGMENT_IDS_FILE, episodes.WEIGHTS_FILE)
TOP_FILES = (episodes.TOKENIZER_STATE_FILE, episodes.METADATA_FILE)
WHOLE_FILE_LIMIT = 64 * 2**20
SAMPLES, SAMPLE_BYTES = 64, 64 * 2**10


class DataChangedError(Exception):
    """A resume against other data than the checkpoint's; one line for the user."""


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            for i in range(SAMPLES):
                f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset_dir: str | Path) -> dict[str, str]:
    """{relative path: digest} of every file the loader reads, in a fixed order."""
    root = Path(dataset_dir)
    files = [root / name for name in TOP_FILES]
    for split in SPLITS:
        files += sorted(p for name in SHARD_FILES for p in (root / split).rglob(name))
    return {str(p.relative_to(root)): _file_digest(p) for p in files if p.is_file()}


def data_identity(config) -> dict[str, Any]:
    return {"dataset": dataset_fingerprint(config.dataset_dir),
            "stream": {k: config[k] for k in STREAM_FIELDS}}


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(saved: dict[str, Any], now: dict[str, Any], dataset_dir: str) -> list[str]:
    """What differs between a checkpoint's identity and this run's, one phrase each."""
    out = []
    for field in STREAM_FIELDS:
        old, new = saved.get("stream", {}).get(field), now["stream"][field]
        if field in saved.get("stream", {}) and old != new:
            out.append(f"config field {field}: checkpoint {old!r}, now {new!r}")
    old_files, new_files = saved.get("dataset", {}), now["dataset"]
    for name in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(name, "absent"), new_files.get(name, "absent")
        if old != new:
            out.append(f"dataset file {Path(dataset_dir) / name}: checkpoint {old}, now {new}")
    return out


def check_resume(saved: dict[str, Any] | None, now: dict[str, Any], *, dataset_dir: str,
                 step: int, allow: bool) -> list[str]:
    """Notes for the log; raises DataChangedError for a difference not allowed on purpose."""
    if saved is None:
        return [f"resume: checkpoint {step} records no dataset fingerprint (written before "
                "they were recorded); the dataset is not checked"]
    diff = differences(saved, now, dataset_dir)
    if not diff:
        return []
    if not allow:
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise DataChangedError(
            f"resume from step {step} refused: {diff[0]}{more}; the checkpoint's batch stream "
            "cannot continue on other data. Restore the dataset, use a new --workdir, or pass "
            "--config.allow_data_change=True to continue on the new data on purpose")
    return [f"resume: data changed on purpose (allow_data_change): {d}" for d in diff]
