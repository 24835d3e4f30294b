"""Throughput and compile accounting of the train loop's steps (for the log lines)."""

from __future__ import annotations

import time
from typing import Any

from mypt_jax.data.batching import BatchInfo, BatchShape


class StepWindow:
    """The steps since the last log line: their batch shapes and token counts, and the time."""

    def __init__(self) -> None:
        self.infos: list[BatchInfo] = []
        self.t0 = time.perf_counter()

    def add(self, info: BatchInfo) -> None:
        self.infos.append(info)

    def close(self) -> dict[str, Any]:
        """Rates over the window (then starts a new one).

        `tokens_per_s` counts the upstream's padded positions (rows x block_size), so it is
        comparable with the upstream and with earlier logs; `real_tokens_per_s` counts
        episode tokens, `trained_tokens_per_s` the tokens the loss trains on.
        """
        now = time.perf_counter()
        elapsed = max(now - self.t0, 1e-9)
        infos, self.infos, self.t0 = self.infos, [], now

        def rate(field: str) -> float:
            return sum(getattr(i, field) for i in infos) / elapsed

        return {
            "step_time": elapsed / max(len(infos), 1),
            "tokens_per_s": rate("padded_positions"),
            "real_tokens_per_s": rate("real_tokens"),
            "trained_tokens_per_s": rate("trained_tokens"),
            "computed_positions_per_s": rate("computed_positions"),
            "buckets": [str(i.shape) for i in infos],
        }


class CompileCounter:
    """Counts the compiles of a jitted step; a compile for a batch shape already seen is news.

    Each new batch shape (bucket) costs one compile, by design. A recompile past that count
    (a shape seen before, compiled again) means something else changed between calls, such
    as a dtype or a sharding, and every such step pays the compile again.
    """

    def __init__(self, jitted) -> None:
        self._jitted = jitted
        self.shapes: set[BatchShape] = set()
        self.compiles = 0

    def after_call(self, shape: BatchShape) -> tuple[bool, str | None]:
        """(compiled now?, warning or None), after calling the step on a batch of `shape`."""
        self.shapes.add(shape)
        # jax.jit's compile cache size (a private API); a wrapped step without it counts shapes.
        cache_size = getattr(self._jitted, "_cache_size", None)
        size = cache_size() if cache_size else len(self.shapes)
        compiled, self.compiles = size > self.compiles, size
        if compiled and size > len(self.shapes):
            return True, (f"the train step compiled {size} times for {len(self.shapes)} batch "
                          f"shapes; the last compile was for {shape}, a shape seen before")
        return compiled, None
