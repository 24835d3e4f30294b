"""The train stream, read, shaped and placed on the devices ahead of the step, in a thread.

Between two 14-60 ms accelerator steps the host must not be the one that waits. A producer
thread turns global batch k into the step's input (the loader's rows, `batching.shape_batch`,
`jax.make_array_from_*` onto the mesh) for k = start, start+1, ... and keeps up to `depth` of
them queued. Batch k is a pure function of k, so the stream is the one an in-loop reader
gives, and the resume position is `position`: the next batch the *step* takes, never the
producer's.

The seconds the loop waited for a batch are summed for the log (`input_wait_s`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax

from mypt_jax.data import batching
from mypt_jax.data import loader as data

_STOP = object()


def device_batch(local: dict, mesh, layout: batching.Layout, pad_id: int):
    """This process's loader rows -> (the global sharded batch shaped by `layout`, its BatchInfo)."""
    shaped, info = batching.shape_batch(local, layout, pad_id=pad_id,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
    return data.global_batch(shaped, mesh), info


class Feed:
    """`next()` -> produce(k) for k = start, start + 1, ...; `depth=0` produces in the caller."""

    def __init__(self, produce: Callable[[int], Any], start: int, depth: int = 2):
        self._produce, self.position, self._depth = produce, start, depth
        self._wait_s = 0.0
        if depth <= 0:
            return
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True,
                                        name="mypt_jax-input")
        self._thread.start()

    def _run(self, k: int) -> None:
        try:
            while not self._stop.is_set():
                item = self._produce(k)
                while not self._stop.is_set():
                    try:
                        self._queue.put((k, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                k += 1
        except BaseException as e:  # handed to the loop, which raises it with its traceback
            self._queue.put((k, (_STOP, e)))

    def next(self) -> Any:
        t0 = time.perf_counter()
        if self._depth <= 0:
            item = self._produce(self.position)
        else:
            k, item = self._queue.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _STOP:
                raise item[1]
            assert k == self.position, (k, self.position)  # the stream never skips
        self._wait_s += time.perf_counter() - t0
        self.position += 1
        return item

    def take_wait_s(self) -> float:
        """Seconds `next()` waited since the last call."""
        wait, self._wait_s = self._wait_s, 0.0
        return wait

    def close(self) -> None:
        if self._depth <= 0:
            return
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)
