"""SFT records: building them, writing JSONL atomically, reading JSONL with file:line errors.

One record is `{"system", "context", "messages", "language"}` in that key order (a mix appends
`mix_source`), serialised with `json.dumps(record, ensure_ascii=False)`, one per `\\n`-ended line,
exactly as the upstream generators write them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from mypt_jax.data.chat import ROLES, SYSTEM_PROMPT

RECORD_KEYS = ("system", "context", "messages", "language")


class DatagenError(Exception):
    """A user-caused problem (bad input file, unwritable output, bad option); the text says where."""


def make_record(question: str, answer: str, context: str, language: str) -> dict:
    """One single-turn record in the upstream key order."""
    return {
        "system": SYSTEM_PROMPT,
        "context": context,
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "language": language,
    }


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def to_jsonl(records: Iterable[dict]) -> str:
    return "".join(dumps(record) + "\n" for record in records)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder and os.replace, so a failure never leaves half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise DatagenError(f"{path}: cannot write output ({err.strerror or err})") from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise DatagenError(f"{path}: cannot write output ({err.strerror or err})") from err
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    write_text_atomic(path, to_jsonl(records))


def write_generator_output(output_dir: str | os.PathLike, name: str, records: list[dict]) -> Path:
    """A generator CLI's output file: written atomically, reported, errors as a clean exit."""
    path = Path(output_dir) / name
    try:
        write_jsonl(path, records)
    except DatagenError as err:
        raise SystemExit(f"error: {err}") from err
    print(f"wrote {len(records)} records to {path} ({language_split(records)})")
    return path


def check_record(record: object) -> str | None:
    """Why `record` is not a usable single- or multi-turn SFT record, or None if it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "expected a non-empty 'messages' list"
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{k}] is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{k}] has unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(message.get("content"), str):
            return f"messages[{k}] has no string 'content'"
    if not any(message["role"] == "assistant" for message in messages):
        return "no assistant turn in 'messages'"
    return None


def read_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False) -> tuple[list[dict], int]:
    """Records of a JSONL file and how many bad lines were skipped.

    Blank lines are ignored. A malformed line (bad JSON or not a usable record) raises
    DatagenError naming `file:line`, unless `skip_invalid`, which skips and counts it.
    A missing or empty file (no records at all) always raises.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DatagenError(f"{path}: input file not found") from err
    except UnicodeDecodeError as err:
        raise DatagenError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DatagenError(f"{path}: cannot read input ({err.strerror or err})") from err
    records: list[dict] = []
    skipped = 0
    # split("\n"), not splitlines(): raw U+2028 and friends are legal inside JSON strings.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = check_record(record)
        except json.JSONDecodeError as err:
            problem = f"malformed JSON ({err.msg} at column {err.colno})"
        if problem is not None:
            if skip_invalid:
                skipped += 1
                continue
            raise DatagenError(f"{path}:{line_no}: {problem}")
        records.append(record)
    if not records:
        detail = f" ({skipped} invalid lines skipped)" if skipped else ""
        raise DatagenError(f"{path}: no records in file{detail}")
    return records, skipped


def language_split(records: Sequence[dict]) -> str:
    counts = Counter(record.get("language", "?") for record in records)
    return " / ".join(f"{lang} {n}" for lang, n in sorted(counts.items()))
