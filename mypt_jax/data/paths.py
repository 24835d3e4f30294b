"""Local paths and remote URIs (`gs://...`) behind one interface, for runs and model dirs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from etils import epath

# What orbax writes last into a committed checkpoint step on object stores.
COMMIT_MARKER = "commit_success.txt"


def is_remote(path: str | os.PathLike) -> bool:
    """A URI with a scheme (`gs://`, `s3://` ...) rather than a local file name."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`; a local path stays as given (relative stays relative)."""
    return epath.Path(os.fspath(path))


def absolute(path: str | os.PathLike) -> epath.Path:
    """For orbax, which refuses relative paths: local made absolute, a URI left untouched."""
    path = as_path(path)
    return path if is_remote(path) else epath.Path(os.path.abspath(path))


def describe_path(path: str | os.PathLike) -> str:
    """A path for records (model dir `source.json`): resolved when local, the URI when remote."""
    return os.fspath(path) if is_remote(path) else str(Path(path).resolve())


def read_json(path: str | os.PathLike, error: type[Exception], what: str = "file") -> Any:
    """Parsed JSON from a local path or URI; missing or malformed raises `error` naming the path."""
    path = as_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
