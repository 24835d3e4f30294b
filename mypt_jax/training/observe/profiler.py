"""A profile of real train steps: `profiler_start_step`, `profiler_num_steps`, `profiler_port`.

The window opens `profiler_start_step` steps after the first step this process runs (so a
resumed run profiles too, and compile-ahead is over by then) and closes `profiler_num_steps`
updates later, after the devices finish them. The trace goes to `<workdir>/profile/` as
`plugins/profile/<run>/<host>.xplane.pb` (TensorBoard's profile plugin, XProf) with a
`perfetto_trace.json.gz` beside it (ui.perfetto.dev opens it). We never ask jax for a
Perfetto *link*: that call waits until someone opens it in a browser.

Each update carries a `train` step annotation; hooks (evals, saves) get ranges named
`hook:<name>` (training/hooks.py). `profiler_port` starts jax's profiler server for capture
on demand (TensorBoard's "capture profile", `jax.collect_profile`). Process 0 profiles;
`profiler_all_hosts` profiles every process, each into its own host file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax

from mypt_jax.data.paths import as_path
from mypt_jax.training.observe.metrics import MetricsWriter

PROFILE_DIR = "profile"


class Profiler:
    def __init__(self, c, writer: MetricsWriter, start: int):
        self.first = start + c.profiler_start_step  # the first profiled update's index
        self.last = self.first + c.profiler_num_steps  # exclusive
        self.enabled = c.profiler_num_steps > 0 and (
            c.profiler_all_hosts or jax.process_index() == 0)
        self.directory = as_path(c.workdir) / PROFILE_DIR
        self.writer = writer
        self.tracing = False
        self.server = None
        if c.profiler_port and (c.profiler_all_hosts or jax.process_index() == 0):
            self.server = jax.profiler.start_server(c.profiler_port)
            writer.print(f"profiler server on port {c.profiler_port} (capture on demand)")

    def on_step(self, info) -> None:
        """At step s (s updates done): open the window before update `first`, close it
        after update `last - 1`."""
        if not self.enabled:
            return
        if info.step == self.first and not self.tracing and not info.final:
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.tracing = True
        elif self.tracing and (info.step >= self.last or info.final):
            jax.block_until_ready(info.state)  # the window's steps, finished on the devices
            self.stop(info.step)

    def stop(self, step: int) -> None:
        jax.profiler.stop_trace()
        self.tracing = False
        files = sorted(Path(str(self.directory)).rglob("*.xplane.pb")) if not str(
            self.directory).startswith(("gs://", "s3://")) else []
        perfetto = sorted(Path(str(self.directory)).rglob("perfetto_trace.json.gz")) if files else []
        record = {"iter": step, "event": "profile", "steps": list(range(self.first, step)),
                  "directory": str(self.directory),
                  "xplane": str(files[-1]) if files else None,
                  "perfetto_trace": str(perfetto[-1]) if perfetto else None}
        self.writer.write(record)
        self.writer.print(f"profile of steps {self.first}..{step - 1}: {record['xplane'] or self.directory}"
                          + (f" (Perfetto: {record['perfetto_trace']})" if perfetto else ""))

    def close(self) -> None:
        if self.tracing:
            with contextlib.suppress(Exception):
                jax.profiler.stop_trace()
            self.tracing = False
        if self.server is not None:
            with contextlib.suppress(Exception):
                jax.profiler.stop_server()
            self.server = None


def step_annotation(step: int):
    """The profiler's marker of one train step (near free when no trace is running)."""
    return jax.profiler.StepTraceAnnotation("train", step_num=step)
