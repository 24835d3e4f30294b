"""A run's shape plan: which step programs to compile, chosen before step 0 from the data.

The batch stream is fixed by the epoch seed, so every batch's exact shape (`batching`'s
length bucket x trained-position bucket) can be read from the episode index alone, lengths
and trained counts, no tokens. Each distinct shape costs one compile; on a TPU that is tens
of seconds against milliseconds per step, so a shape that only a few batches need is
cheaper padded up to a shape that is compiled anyway (exact: `BatchShape.covers`).

The cost model: a program costs `compile_s` once, a batch costs its program's model FLOPs
over `flops_per_s`. Merges are taken greedily, largest saving first, while the planned
positions (rows x length, what every layer computes) stay within `max_extra` of the exact
ones. The plan covers the whole run (steps 0..max_iters), whatever step it resumes at, so a
resumed run asks for the same programs (persistent-cache hits).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from mypt_jax.data.batching import BatchShape, Layout, fit_program, natural_shape
from mypt_jax.model.flops import forward_flops, train_step_flops

MAX_EXTRA_POSITIONS = 0.10  # planned computed positions at most this much above exact
# Priors where nothing was measured yet (compile_cache.Timings remembers measured ones): a
# compile's seconds (the 750M step for a TPU slice took 35-115 s here), and the model FLOP/s
# a step reaches per device (about a fifth of a v5p's or H100's bf16 peak, a small model's
# share; two CPU cores reach 50-90 GFLOP/s on the CPU presets).
PRIOR_COMPILE_S = {"cpu": 3.0, "gpu": 40.0, "tpu": 40.0}
PRIOR_FLOPS_PER_S = {"cpu": 5e10, "gpu": 2e14, "tpu": 1e14}


@dataclasses.dataclass(frozen=True)
class Cost:
    compile_s: float  # one program's compile
    flops_per_s: float  # model FLOPs the step achieves per second

    @classmethod
    def prior(cls, backend: str) -> Cost:
        """One device's prior (`compile_plan.cost_for` scales the rate by the devices)."""
        return cls(PRIOR_COMPILE_S.get(backend, 40.0), PRIOR_FLOPS_PER_S.get(backend, 1e14))


def step_flops(mc, shape: BatchShape, kind: str = "train") -> float:
    """Model FLOPs of one batch of `shape` (train step, or forward only for "eval")."""
    if kind == "eval":
        return forward_flops(mc, shape.rows, shape.length, shape.projected)
    return train_step_flops(mc, shape.rows, shape.length, shape.projected)["total"]


@dataclasses.dataclass(frozen=True)
class ShapePlan:
    kind: str  # "train" or "eval"
    programs: tuple[BatchShape, ...]  # what to compile, cheapest first (batches take the first fit)
    counts: dict[BatchShape, int]  # exact shape -> batches
    assigned: dict[BatchShape, BatchShape]  # exact shape -> the program it runs as

    def positions(self, planned: bool = True) -> int:
        """Rows x length computed over the run, as planned or at the exact shapes."""
        run_as = self.assigned if planned else {s: s for s in self.counts}
        return sum(n * run_as[s].rows * run_as[s].length for s, n in self.counts.items())

    @property
    def extra(self) -> float:
        exact = self.positions(planned=False)
        return self.positions() / exact - 1.0 if exact else 0.0

    def batches_per_program(self) -> dict[BatchShape, int]:
        out = dict.fromkeys(self.programs, 0)
        for s, n in self.counts.items():
            out[self.assigned[s]] += n
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "exact_shapes": len(self.counts),
                "programs": {str(p): n for p, n in self.batches_per_program().items()},
                "padded_up": {str(s): str(p) for s, p in self.assigned.items() if s != p},
                "extra_positions": round(self.extra, 4)}

    def describe(self) -> str:
        per = ", ".join(f"{p} x{n}" for p, n in self.batches_per_program().items())
        return (f"{self.kind} plan: {len(self.counts)} exact shapes -> {len(self.programs)} "
                f"programs ({per}); {self.extra:+.1%} computed positions")


def shape_sequence(source, layout: Layout, batches: Iterable[int]) -> list[BatchShape]:
    """The exact shape of each of the stream's global batches `batches`, in order (read from
    the episode index only)."""
    kept_G, trained_G = source.stats_G()
    prepacked = source.split.segmented
    out = []
    for k in batches:
        ids = source.global_episode_ids(k)
        out.append(natural_shape(kept_G[ids], trained_G[ids], layout,
                                 local_rows=source.local_batch_size,
                                 process_count=source.process_count, prepacked=prepacked))
    return out


def count_shapes(source, layout: Layout, batches: Iterable[int]) -> collections.Counter:
    """Exact shape -> number of the stream's global batches `batches` (the episode index only)."""
    return collections.Counter(shape_sequence(source, layout, batches))


def plan(counts: dict[BatchShape, int], step_s: Callable[[BatchShape], float], compile_s: float,
         *, kind: str = "train", max_extra: float = MAX_EXTRA_POSITIONS,
         exact: bool = False) -> ShapePlan:
    """Pads rare shapes up to covering ones while that saves time and positions stay within
    `max_extra`; `exact=True` keeps every exact shape."""
    assigned = {s: s for s in counts}
    budget = max_extra * sum(n * s.rows * s.length for s, n in counts.items())

    def load(p: BatchShape) -> list[BatchShape]:
        return [s for s, q in assigned.items() if q == p]

    while not exact:
        kept = set(assigned.values())
        best = None
        for src in kept:
            moved = load(src)
            n = sum(counts[s] for s in moved)
            for dst in kept:
                if dst == src or not dst.covers(src):
                    continue
                extra = n * (dst.rows * dst.length - src.rows * src.length)
                saving = compile_s - n * (step_s(dst) - step_s(src))
                if saving > 0 and extra <= budget and (best is None or saving > best[0]):
                    best = (saving, extra, src, dst)
        if best is None:
            break
        _, extra, src, dst = best
        budget -= extra
        for s in load(src):
            assigned[s] = dst
    # Cheapest first; each batch then runs as the first program that covers it, as
    # `batching.fit_program` picks it during the run.
    programs = tuple(sorted(set(assigned.values()), key=lambda p: (step_s(p), str(p))))
    return ShapePlan(kind, programs, dict(counts),
                     {s: fit_program(s, programs) for s in counts})
