"""The hand-off between two phases in one process (`pipeline --phase all`).

A phase that hands off (`train(..., hand_off=True)`) ends with its final eval. Its weights
stay on the devices for the next phase, and its final writes go on in the background:
first the exports (`model/`, the upstream copy), then the final checkpoint, whose record
marks the run finished. That is the order a phase that does not hand off keeps
(training/trainer.py), so a run marked finished has its exports. Nothing waits for them
until the curriculum ends (`FinalWrites.wait`).

The next phase starts from a copy of the final params (`InitSource.params`). The copy is
its own because the next phase's first update donates its state while the final save still
reads the original. These are the values that restoring the final checkpoint would give
back, so the hand-off is bit-identical to the one through the disk
(tests/test_handoff.py).

With several processes the final writes run in the foreground, at the same point on every
process: they gather the weights and meet at barriers, collectives that must not interleave
with the next phase's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable

import jax

from mypt_jax.training.setup.init_source import InitSource


class FinalWrites:
    """A phase's final writes, started at construction; `wait()` re-raises what failed."""

    def __init__(self, write: Callable[[], None], cleanup: contextlib.ExitStack):
        self._error: BaseException | None = None

        def target() -> None:
            try:
                with cleanup:  # the checkpointer, the log: closed once written
                    write()
            except BaseException as e:  # noqa: BLE001 - raised again by wait()
                self._error = e

        self._thread = None
        if jax.process_count() > 1:
            target()
        else:
            self._thread = threading.Thread(target=target, name="mypt_jax-final-writes")
            self._thread.start()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error


@dataclasses.dataclass
class Handoff:
    """A finished phase, for the next one: its weights as an init, its writes in flight."""

    init: InitSource  # kind "run" at the phase's workdir, `params` on the devices
    writes: FinalWrites


def weights_for_next(params):
    """A copy of the final params that the next phase may donate."""
    return jax.tree.map(lambda x: x.copy(), params)
