"""SIGTERM and SIGINT become "stop after this step, save, exit 75", on every process at one step.

Schedulers (spot and preemptible TPU VMs, Kubernetes, Slurm) and our own `launch/* stop` send
SIGTERM and give the job a grace period. The trainer finishes the step in flight, saves a
checkpoint at that step, writes `event: preempted` and exits with `PREEMPTED_EXIT_CODE`:
rerunning the same command resumes from there, bit-identically.

One process: a Python handler sets a flag that the loop reads after each step.

Several processes (`jax.distributed`): jax's preemption service owns SIGTERM (its C++ notifier
installs the handler when the client connects, so we must not replace it) and tells the other
processes through the coordinator; `reached_preemption_sync_point(step)` then turns True on
every process at the same step. A SIGINT is re-sent to ourselves as SIGTERM so that it takes
the same path.

A second SIGINT restores Python's default, so pressing Ctrl-C twice aborts at once.

The watcher is there from process start (`install()`, the first thing the command line does),
and the run asks it at named points of the start-up too (after the restore, after the
compile-ahead), then at every step. It counts those calls itself and hands jax's service the
count, the sync manager's own terms (it agrees on "the fastest process's count + 1", counting
from 0): step numbers would start at the resumed step and never meet the agreed point. A
signal that came before the process joined the others is sent again to jax's service at the
first call. A stop before anything new was trained saves nothing: the resume point is already
on disk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". The launchers
# (launch/launchlib.py, which cannot import us) restart on it; tests/test_launch.py keeps the
# two equal.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is committed (or, before anything new
    was trained, with nothing to save); the CLI exits 75."""

    def __init__(self, step: int, signal_name: str, checkpoint: str | None, saved: bool = True):
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint
        where = (f"saved {checkpoint}" if saved else
                 f"nothing new to save (resumes from {checkpoint or 'the start'})")
        super().__init__(f"{signal_name}: stopped at step {step}, {where}; rerun the same "
                         f"command to resume (exit code {PREEMPTED_EXIT_CODE})")


def _jax_service():
    """jax's preemption sync manager when this process joined a distributed run, else None."""
    from jax._src import distributed  # the public helper raises instead of telling us

    state = distributed.global_state
    return state.preemption_sync_manager if state.client is not None else None


class Watcher:
    """Installed for a process (`install`) or the span of a run: `requested()` says whether to
    stop at this point."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._calls = 0  # requested() calls: the same sequence on every process
        self._forwarded = False

    def __enter__(self) -> Watcher:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python takes signals only on the main thread; leave them as they are
        self._install(signal.SIGINT)
        if _jax_service() is None:  # once joined, SIGTERM is the C++ notifier's
            self._install(signal.SIGTERM)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _install(self, signum: int) -> None:
        self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        del frame
        first = self.signal_name is None
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if signum == signal.SIGINT:
            # The next Ctrl-C is Python's KeyboardInterrupt: the user can always abort.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if first:
            print(f"{signal.Signals(signum).name} received: stopping after the step in flight "
                  "(or at the next start-up point), saving what was trained since the last "
                  "checkpoint (a second Ctrl-C aborts without saving)",
                  file=sys.stderr, flush=True)
        if _jax_service() is not None:
            self._forward()

    def _forward(self) -> None:
        """Our signal to jax's notifier, which spreads it to every process."""
        if not self._forwarded:
            self._forwarded = True
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self) -> bool:
        """True at the point every process stops at. Call it at the same points (start-up
        points, then once per step) on every process."""
        self._calls += 1
        service = _jax_service()
        if service is None:
            return self.signal_name is not None
        if self.signal_name is not None:
            self._forward()  # it came to our handler: before this process joined, or a SIGINT
        if service.reached_sync_point(self._calls):
            self.signal_name = self.signal_name or "SIGTERM"  # possibly sent to another host
            return True
        return False


_PROCESS_WATCHER: Watcher | None = None


def install() -> Watcher:
    """Installs the process's watcher (once): the command line's first act, so a stop during
    the imports, the restore or the compiles is not lost."""
    global _PROCESS_WATCHER
    if _PROCESS_WATCHER is None:
        _PROCESS_WATCHER = Watcher().__enter__()
        # parallel/stack.py re-executes with these blocked: a stop sent meanwhile lands now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    return _PROCESS_WATCHER


def watching() -> contextlib.AbstractContextManager[Watcher]:
    """The process's watcher where `install` ran, else one for the span of this run."""
    if _PROCESS_WATCHER is not None:
        return contextlib.nullcontext(_PROCESS_WATCHER)
    return Watcher()
