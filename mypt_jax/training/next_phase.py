"""The next phase's programs, compiled while this phase trains (the curriculum as one job).

`pipeline --phase all` starts `NextPhase(config)` for phase k+1 as phase k starts. A thread
plans k+1's run from its config and dataset as k+1's start-up will (`startup.plan_for`,
with the same cost model) and compiles its eval and train programs into the persistent
compilation cache, where k+1's start-up finds them. It runs only where programs compile
behind the steps anyway (`compile_plan.background`: accelerators, whose host cores idle
while the devices step; on CPU the cores that would compile are the ones stepping) and the
cache is on, with one process: with several, planning compares the plans across them, a
collective that must not run beside the phase's own. The eval-prompt generation is left to
k+1: it compiles by running on weights.

Nothing here can change what k+1 runs: a plan that differs by then (phase k's end records
its measured compile seconds, which the cost model reads) compiles its own programs at k+1's
start, as without this; a compile that fails is named by k+1's own compile of it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jax

from mypt_jax.training import startup
from mypt_jax.training.compilation import compile_cache, compile_plan
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts

log = logging.getLogger(__name__)


def wanted(config) -> bool:
    """Whether the next phase's programs compile ahead: behind the steps, into a cache, the
    one this process uses already where a run set it (pointing it elsewhere would reset it
    under the phase that is running)."""
    folder = compile_cache.resolve_dir(config.compilation_cache_dir)
    now = compile_cache.current()
    return (compile_plan.background(config) and bool(folder) and now in (None, folder)
            and jax.process_count() == 1)


class NextPhase:
    """Compiles phase k+1's programs in a thread; `wait()` returns what it compiled."""

    def __init__(self, config, workdir: str | None = None):
        self.records: list[dict[str, Any]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(config, workdir),
                                        name="mypt_jax-next-phase", daemon=True)
        self._thread.start()

    def _run(self, config, workdir) -> None:
        try:
            # Not read: init_from, the phase now training, has no final checkpoint yet.
            r = cfg_lib.resolve(config, workdir, read_files=False)
            cache_dir = compile_cache.use(r.config.compilation_cache_dir)
            mesh = cfg_lib.mesh_for(r)
            optimizer = optim.optimizer_spec(r.config)
            tx, schedule = optimizer.build()
            step_fn, row_fn = startup.step_functions(r, mesh, ts.model_def(r.model_config),
                                                          tx, schedule, optimizer)
            planned = startup.plan_for(
                r, mesh, jax.process_count(), jax.process_index(),
                timings=compile_plan.timings_for(r, mesh, cache_dir))
            evals, train = compile_plan.program_jobs(planned, r, mesh, tx, step_fn, row_fn)
            for job in evals + train:
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                job.lower().compile()
                self.records.append({"program": job.kind, "shape": str(job.shape),
                                     "seconds": round(time.perf_counter() - t0, 3)})
        except Exception as e:  # noqa: BLE001 - the phase's own start-up compiles and names it
            self.error = f"{type(e).__name__}: {e}"
            log.warning("compiling the next phase's programs ahead: %s", self.error)

    def wait(self) -> list[dict[str, Any]]:
        self._thread.join()
        return self.records

    def stop(self) -> None:
        """After the compile in flight, compile nothing more (the job is ending)."""
        self._stop.set()
        self._thread.join()
