"""Chat JSONL records read and validated: each line a conversation, or an error naming file:line.

Stricter than the upstream (see prepare.py's docstring): a malformed line, an unknown role or
a record without an assistant turn fails with file:line and the reason, or, with
`skip_invalid`, is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mypt_jax.data.chat import ROLES

log = logging.getLogger(__name__)

_MAX_SKIP_WARNINGS = 10

Messages = list[dict[str, str]]


class PrepareError(ValueError):
    """Bad input or an unusable output location; the message names the file (and line)."""


def _validate_record(record: object) -> Messages:
    """The record's messages, or ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    messages = record.get("messages")
    if messages is None:
        raise ValueError("no 'messages' key")
    if not isinstance(messages, list):
        raise ValueError(f"'messages' must be a list, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object, got {type(message).__name__}")
        if "role" not in message:
            raise ValueError(f"messages[{i}] has no 'role' (expected one of {list(ROLES)})")
        role = message["role"]
        if role not in ROLES:
            raise ValueError(
                f"messages[{i}] has unknown role {role!r} (expected one of {list(ROLES)})"
            )
        content = message.get("content")
        if not isinstance(content, str):
            got = (
                "no 'content'" if "content" not in message else f"{type(content).__name__} content"
            )
            raise ValueError(f"messages[{i}] ({role}) has {got}; expected a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn (nothing to train on)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines as the upstream's text-mode read sees them (\n, \r\n and \r end a line).

    Bytes are decoded line by line so that invalid UTF-8 is reported with its line number.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise PrepareError(f"{path}: input file not found") from None
    except IsADirectoryError:
        raise PrepareError(f"{path}: input is a directory, expected a JSONL file") from None
    except PermissionError:
        raise PrepareError(f"{path}: permission denied reading the input") from None
    line_number = 0
    with f:
        for raw in f:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(
                    f"{path}:{line_number + 1}: not valid UTF-8 ({e.reason} at byte {e.start})"
                ) from None
            for line in text.replace("\r\n", "\n").split("\r") if "\r" in text else (text,):
                line_number += 1
                yield line_number, line


def read_records(path: str | os.PathLike, skip_invalid: bool) -> tuple[list[Messages], int]:
    """(conversations in file order, number of invalid records skipped)."""
    path = Path(path)
    conversations: list[Messages] = []
    skipped = 0
    for line_number, line in _iter_lines(path):
        line = line.strip()
        if not line:
            continue
        try:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
            conversations.append(_validate_record(record))
        except ValueError as e:
            where = f"{path}:{line_number}: {e}"
            if not skip_invalid:
                raise PrepareError(f"{where} (use --skip_invalid to skip such records)") from None
            skipped += 1
            if skipped <= _MAX_SKIP_WARNINGS:
                log.warning("skipping %s", where)
            elif skipped == _MAX_SKIP_WARNINGS + 1:
                log.warning("further invalid records are skipped without a message")
    if not conversations:
        detail = f" ({skipped} invalid records skipped)" if skipped else ""
        raise PrepareError(f"{path}: no conversations to prepare{detail}")
    return conversations, skipped
