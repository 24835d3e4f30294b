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
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". The launchers
# (launch/launchlib.py, which cannot import us) restart on it; tests/test_launch.py keeps the
# two equal.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is committed; the CLI exits 75."""

    def __init__(self, step: int, signal_name: str, checkpoint: str):
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint
        super().__init__(
            f"{signal_name}: stopped at step {step}, saved {checkpoint}; rerun the same command "
            f"to resume (exit code {PREEMPTED_EXIT_CODE})"
        )


def _jax_service():
    """jax's preemption sync manager when this process joined a distributed run, else None."""
    from jax._src import distributed  # the public helper raises instead of telling us

    state = distributed.global_state
    return state.preemption_sync_manager if state.client is not None else None


class Watcher:
    """Installed for the span of a run: `requested(step)` says whether to stop at `step`."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._service = _jax_service()

    def __enter__(self) -> Watcher:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python takes signals only on the main thread; leave them as they are
        self._install(signal.SIGINT)
        if self._service is None:
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
            print(f"{signal.Signals(signum).name} received: finishing the step in flight, then "
                  "saving a checkpoint (a second Ctrl-C aborts without saving)",
                  file=sys.stderr, flush=True)
        if self._service is not None and signum != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # jax's notifier spreads it to every process

    def requested(self, step: int) -> bool:
        """True at the step every process stops at. Call it once per step, on every process."""
        if self._service is None:
            return self.signal_name is not None
        if self._service.reached_sync_point(step):
            self.signal_name = self.signal_name or "SIGTERM"  # possibly sent to another host
            return True
        return False
