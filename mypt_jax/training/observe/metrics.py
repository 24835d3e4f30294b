"""Run logs: an appended JSONL (upstream keys kept), TensorBoard events (no TensorFlow), console.

Only process 0 writes; other processes get a writer that does nothing.

Lines go to the OS as they are written (line-buffered), without an fsync each: a killed
process keeps them, and the step loop does not wait for the disk.

A remote `log_file` or TensorBoard dir (`gs://...`): object stores cannot append, so the
writer appends to a local copy (in a temp dir, seeded from the remote log when one exists,
so a resumed run continues it) and uploads each file whole from a background thread: at
every eval/event/error record, at most every `SYNC_INTERVAL_S` seconds for step records,
and on `flush()`/`close()` (which wait for the upload). A run killed between uploads loses at
most that interval's step lines remotely; the other hosts never wait for an upload.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from etils import epath
from tqdm import tqdm

from mypt_jax.data.paths import is_remote

SYNC_INTERVAL_S = 60.0  # the longest a remote log lags behind (step records only)


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


def _upload(local: Path, remote: epath.Path) -> None:
    """Rewrites the remote object with the local file's whole content."""
    with local.open("rb") as src, remote.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


class MetricsWriter:
    def __init__(
        self,
        log_file: str | os.PathLike,
        tb_dir: str | os.PathLike | None,
        *,
        enabled: bool = True,
        total_steps: int = 0,
        start_step: int = 0,
    ):
        self.enabled = enabled
        self.log_file = epath.Path(os.fspath(log_file))  # epath: keeps gs://b intact
        self._local_log = Path(log_file) if not is_remote(log_file) else None
        self._staging: Path | None = None
        self._remote_tb: epath.Path | None = None
        self._synced_at = 0.0
        self._upload_wanted = threading.Event()
        self._uploader: threading.Thread | None = None
        self._log = None
        self._tb = None
        self._bar = None
        self.interactive = sys.stderr.isatty()  # a progress bar, else plain lines
        if not enabled:
            return
        if self._local_log is None or (tb_dir is not None and is_remote(tb_dir)):
            self._staging = Path(tempfile.mkdtemp(prefix="mypt_metrics_"))
        if self._local_log is None:
            self._local_log = self._staging / self.log_file.name
            if self.log_file.exists():  # a resumed run appends to what is there
                with self.log_file.open("rb") as src, self._local_log.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:
            self._local_log.parent.mkdir(parents=True, exist_ok=True)
        self._log = self._local_log.open("a", encoding="utf-8", buffering=1)
        if self._staging is not None:
            self._uploader = threading.Thread(target=self._upload_loop, daemon=True,
                                              name="mypt_jax-log-upload")
            self._uploader.start()
        if tb_dir is not None:
            from tensorboardX import SummaryWriter

            local_tb = tb_dir
            if is_remote(tb_dir):
                self._remote_tb = epath.Path(os.fspath(tb_dir))
                local_tb = self._staging / "tb"
            self._tb = SummaryWriter(str(local_tb))
        if self.interactive:
            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def write(self, record: dict[str, Any]) -> None:
        """One JSONL line, handed to the OS at once (no fsync: see the module docstring)."""
        if not self.enabled:
            return
        line = json.dumps(_jsonable({**record, "time": time.time()}), ensure_ascii=False)
        self._log.write(line + "\n")
        # Step records are frequent; evals, events and errors are the ones worth an upload now.
        if self._staging is not None and ("train_loss" not in record or
                                          time.monotonic() - self._synced_at >= SYNC_INTERVAL_S):
            self._synced_at = time.monotonic()
            self._upload_wanted.set()

    def _upload_loop(self) -> None:
        while True:
            self._upload_wanted.wait()
            self._upload_wanted.clear()
            if self._staging is None:  # closed
                return
            try:
                self._upload()
            except OSError as e:  # a bucket hiccup must not kill the run; close() retries
                print(f"warning: log upload failed: {e}", file=sys.stderr, flush=True)

    def _upload(self) -> None:
        """Uploads the local copies of remote targets (there is a staging dir only for those)."""
        if is_remote(self.log_file):
            _upload(self._local_log, self.log_file)
        if self._remote_tb is not None:
            if self._tb is not None:
                self._tb.flush()
            local_tb = self._staging / "tb"
            for f in sorted(local_tb.rglob("*")):
                if f.is_file():
                    _upload(f, self._remote_tb / f.relative_to(local_tb).as_posix())

    def _sync_now(self) -> None:
        """Stops the background uploads and uploads everything once more, in this thread."""
        if self._log is not None:
            self._log.flush()
        if self._staging is None:
            return
        if self._uploader is not None:
            staging, self._staging = self._staging, None
            self._upload_wanted.set()
            self._uploader.join()
            self._staging, self._uploader = staging, None
        self._upload()

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
        if self._log is not None:
            self._log.flush()
        if self._staging is not None:
            self._upload_wanted.set()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.flush()
        self._sync_now()
        if self._log is not None:
            os.fsync(self._log.fileno())  # once, at the end
            self._log.close()
            self._log = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
