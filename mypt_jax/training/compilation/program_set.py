"""Every planned program compiled before step 0, concurrently, then called by batch shape.

`Programs.compile_ahead(jobs)` lowers and compiles each job in a thread pool (XLA releases
the GIL while it compiles; a TPU compile keeps about 1.7 cores busy, so the pool gets a
thread per two cores), prints a progress line per program and keeps each one's seconds and
persistent-cache hit. A failed compile stops the run before step 0, naming the program and
its shape. During the run `call(kind, shape, *args)` runs the compiled program; a shape
outside the plan compiles there and then, and `late` lists it for a warning with its
seconds.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from mypt_jax.training.compilation import compile_cache


class CompileError(RuntimeError):
    """A planned program failed to compile; the message names it and its shape."""


@dataclasses.dataclass(frozen=True)
class Job:
    kind: str  # "train", "eval", "generate"
    shape: Any  # its BatchShape (or a description), the key `call` looks it up by
    lower: Callable[[], Any] | None  # -> a jax.stages.Lowered
    # Instead of `lower`: a call that compiles a jitted function by running it once (the
    # eval-prompt generation, whose many arguments its own call path builds); its program
    # then sits in jax.jit's cache and `call` never sees it.
    warm: Callable[[], Any] | None = None


def default_threads(cpu_count: int | None = None) -> int:
    return max(1, (cpu_count or os.cpu_count() or 2) // 2)


class Programs:
    def __init__(self, print_fn: Callable[[str], None] = print):
        self.compiled: dict[tuple[str, Any], Any] = {}  # (kind, shape) -> compiled program
        self.records: list[dict[str, Any]] = []  # {program, shape, seconds, cache_hit, ...}
        self.late: list[dict[str, Any]] = []  # compiles during the run (shapes off the plan)
        self.ahead_wall_s = 0.0
        self._lowerers: dict[str, Callable[[Any], Any]] = {}
        self._print = print_fn

    def _compile(self, job: Job) -> tuple[Any, dict[str, Any]]:
        if job.warm is not None:
            with compile_cache.Timed() as t:
                job.warm()
            compiled = None
        else:
            lowered = job.lower()
            with compile_cache.Timed() as t:
                compiled = lowered.compile()
        return compiled, {"program": job.kind, "shape": str(job.shape),
                          "seconds": round(t.seconds, 3), "cache_hit": t.cache_hit}

    def compile_ahead(self, jobs: list[Job], threads: int = 0) -> None:
        """Compiles `jobs` (at most `threads` at once; 0 = `default_threads()`)."""
        if not jobs:
            return
        threads = min(threads or default_threads(), len(jobs))
        t0 = time.perf_counter()
        self._print(f"compiling {len(jobs)} programs ahead ({threads} thread"
                    f"{'s' if threads > 1 else ''})")
        failures = []
        with concurrent.futures.ThreadPoolExecutor(threads, "mypt_jax-compile") as pool:
            futures = {pool.submit(self._compile, job): job for job in jobs}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                job = futures[future]
                try:
                    compiled, record = future.result()
                except Exception as e:  # noqa: BLE001 - reported with its program below
                    failures.append(f"{job.kind} {job.shape}: {type(e).__name__}: {e}")
                    continue
                if compiled is not None:
                    self.compiled[(job.kind, job.shape)] = compiled
                self.records.append(record)
                hit = {True: "cache hit", False: "compiled", None: "compiled, no cache"}
                self._print(f"  [{done}/{len(jobs)}] {job.kind} {job.shape}: "
                            f"{record['seconds']:.1f}s ({hit[record['cache_hit']]})")
        self.ahead_wall_s = time.perf_counter() - t0
        if failures:
            raise CompileError(f"{len(failures)} of {len(jobs)} programs failed to compile "
                               "before step 0: " + "; ".join(failures))

    def register(self, kind: str, lower: Callable[..., Any]) -> None:
        """How to lower a `kind` program from its call's arguments (for shapes off the plan)."""
        self._lowerers[kind] = lower

    def call(self, kind: str, shape: Any, *args):
        key = (kind, shape)
        if key not in self.compiled:
            args_now = args
            compiled, record = self._compile(Job(kind, shape, lambda: self._lowerers[kind](*args_now)))
            self.compiled[key] = compiled
            self.records.append({**record, "planned": False})
            self.late.append(record)
        return self.compiled[key](*args)

    def serial_seconds(self) -> float:
        return sum(r["seconds"] for r in self.records)
