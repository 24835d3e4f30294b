"""Throughput of the train loop's steps (for the log lines)."""

from __future__ import annotations

import time
from typing import Any

from mypt_jax.data.batching import BatchInfo


class StepWindow:
    """The steps since the last log line: their batch shapes and token counts, and the time."""

    def __init__(self) -> None:
        self.infos: list[BatchInfo] = []
        self.t0 = time.perf_counter()
        self.paused_s = 0.0  # evals and saves inside the window: not step time

    def exclude(self, seconds: float) -> None:
        self.paused_s += seconds

    def add(self, info: BatchInfo) -> None:
        self.infos.append(info)

    def close(self) -> dict[str, Any]:
        """Rates over the window (then starts a new one).

        `tokens_per_s` counts the upstream's padded positions (rows x block_size), so it is
        comparable with the upstream and with earlier logs; `real_tokens_per_s` counts
        episode tokens, `trained_tokens_per_s` the tokens the loss trains on.
        """
        now = time.perf_counter()
        elapsed = max(now - self.t0 - self.paused_s, 1e-9)
        infos, self.infos, self.t0, self.paused_s = self.infos, [], now, 0.0

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
