"""A run's planned programs, compiled concurrently, then called by batch shape.

`Programs.compile_ahead(jobs, first=n)` lowers and compiles the jobs in a thread pool, in
their order (XLA releases the GIL while it compiles; a TPU compile keeps about 1.7 cores
busy, so the pool gets a thread per two cores), and returns once the first `n` are
compiled: the run starts stepping then, and the rest compile behind it. `call(kind, shape,
*args)` runs a program, waiting for its own compile if it is still going (never for
another's). A failed compile stops the run there, before the program's first batch, naming
the program and its shape; so does `check`, run as each compile ends (the memory check on
accelerators). A shape outside the
plan compiles there and then, and `late` lists it for a warning with its seconds. Each
program's seconds and persistent-cache hit are kept (`records`), with a progress line.
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
    def __init__(self, print_fn: Callable[[str], None] = print,
                 check: Callable[[str, Any, Any], None] | None = None):
        self.compiled: dict[tuple[str, Any], Any] = {}  # (kind, shape) -> compiled program
        self.records: list[dict[str, Any]] = []  # {program, shape, seconds, cache_hit, ...}
        self.late: list[dict[str, Any]] = []  # compiles during the run (shapes off the plan)
        self.behind: list[dict[str, Any]] = []  # planned ones that ended behind the steps
        self.ahead_wall_s = 0.0  # until the run could start: the first jobs compiled
        self.waited_s = 0.0  # the run's waits for programs compiling behind it
        self._lowerers: dict[str, Callable[[Any], Any]] = {}
        self._print = print_fn
        self.check = check  # (kind, shape, compiled) -> None; raises where it does not fit
        self._pending: dict[tuple[str, Any], concurrent.futures.Future] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._jobs = 0

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

    def compile_ahead(self, jobs: list[Job], threads: int = 0, first: int | None = None) -> None:
        """Starts compiling `jobs` in order (at most `threads` at once; 0 =
        `default_threads()`) and returns once the first `first` (None: all) are compiled."""
        if not jobs:
            return
        threads = min(threads or default_threads(), len(jobs))
        first = len(jobs) if first is None else min(first, len(jobs))
        t0 = time.perf_counter()
        behind = f", {len(jobs) - first} of them behind the steps" if first < len(jobs) else ""
        self._print(f"compiling {len(jobs)} programs ahead ({threads} thread"
                    f"{'s' if threads > 1 else ''}{behind})")
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "mypt_jax-compile")
        self._jobs = len(jobs)
        for job in jobs:
            self._pending[(job.kind, job.shape)] = self._pool.submit(self._compile, job)
        failures = []
        for job in jobs[:first]:
            try:
                self._collect((job.kind, job.shape))
            except CompileError as e:
                failures.append(str(e))
        self.ahead_wall_s = time.perf_counter() - t0
        if failures:
            self.close()
            raise CompileError(f"{len(failures)} of {len(jobs)} programs failed to compile "
                               "before step 0: " + "; ".join(failures))

    def _collect(self, key: tuple[str, Any]) -> None:
        """Waits for `key`'s compile and keeps its program (raises CompileError)."""
        future = self._pending.pop(key)
        try:
            compiled, record = future.result()
        except Exception as e:  # noqa: BLE001 - reported with its program
            raise CompileError(f"{key[0]} {key[1]}: {type(e).__name__}: {e}") from e
        if self.check is not None and compiled is not None:
            self.check(key[0], key[1], compiled)
        if compiled is not None:
            self.compiled[key] = compiled
        self.records.append(record)
        if self.ahead_wall_s:  # compile_ahead has returned: the steps had started
            self.behind.append(record)
        hit = {True: "cache hit", False: "compiled", None: "compiled, no cache"}
        self._print(f"  [{len(self.records)}/{self._jobs}] {key[0]} {key[1]}: "
                    f"{record['seconds']:.1f}s ({hit[record['cache_hit']]})")

    def join(self) -> None:
        """Waits for every program still compiling (the end of a run; raises CompileError)."""
        for key in list(self._pending):
            self._collect(key)
        self.close()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def register(self, kind: str, lower: Callable[..., Any]) -> None:
        """How to lower a `kind` program from its call's arguments (for shapes off the plan)."""
        self._lowerers[kind] = lower

    def call(self, kind: str, shape: Any, *args):
        key = (kind, shape)
        if key in self._pending:  # compiling behind the steps: wait for this one only
            t0 = time.perf_counter()
            self._collect(key)
            self.waited_s += time.perf_counter() - t0
        if key not in self.compiled:
            args_now = args
            compiled, record = self._compile(Job(kind, shape, lambda: self._lowerers[kind](*args_now)))
            self.compiled[key] = compiled
            self.records.append({**record, "planned": False})
            self.late.append(record)
        return self.compiled[key](*args)

    def serial_seconds(self) -> float:
        return sum(r["seconds"] for r in self.records)
