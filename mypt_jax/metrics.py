"""Run logs: an appended JSONL (upstream keys kept), TensorBoard events (no TensorFlow), console.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep it readable
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class MetricsWriter:
    def __init__(
        self,
        log_file: str | Path,
        tb_dir: str | Path | None,
        *,
        enabled: bool = True,
        total_steps: int = 0,
        start_step: int = 0,
    ):
        self.enabled = enabled
        self.log_file = Path(log_file)
        self._tb = None
        self._bar = None
        self.interactive = sys.stderr.isatty()  # a progress bar, else plain lines
        if not enabled:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if tb_dir is not None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(tb_dir))
        if self.interactive:
            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def write(self, record: dict[str, Any]) -> None:
        """One JSONL line (flushed and fsynced: a killed run keeps every line it wrote)."""
        if not self.enabled:
            return
        line = json.dumps(_jsonable({**record, "time": time.time()}), ensure_ascii=False)
        with self.log_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is None:
            return
        for name, value in values.items():
            if value is not None:
                self._tb.add_scalar(name, float(value), step)

    def text(self, step: int, name: str, value: str) -> None:
        if self._tb is not None:
            self._tb.add_text(name, value, step)

    def progress(self, step: int, postfix: dict[str, str] | None = None) -> None:
        if self._bar is not None:
            self._bar.n = step
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()

    def print(self, message: str) -> None:
        """A console line that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
