"""Why a checkpoint did not read back: damage, a passing I/O fault, or neither.

Only damage moves a checkpoint aside (`Checkpointer.restore_newest`), and damage must be
proven: the checkpoint's own files failing to decode (a truncated or overwritten array file,
metadata that is not JSON, an item missing from the step). Everything else leaves every
checkpoint where it is:
- a passing fault of the storage (a GCS 503, an NFS timeout, a reset connection) is retried
  after `RETRY_DELAYS_S`, then stops the run with `TRANSIENT_EXIT_CODE`, which the launchers
  rerun a bounded number of times (launch/launchlib.py);
- anything else (out of memory on a smaller slice, a permission, an error we do not know) is
  a `CheckpointError` (exit 4) that names the step and says nothing was moved.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mypt_jax.interop.model_io import cause_line

log = logging.getLogger(__name__)

# sysexits.h EX_IOERR. launch/launchlib.py, which cannot import us, mirrors it (a test keeps
# the two equal).
TRANSIENT_EXIT_CODE = 74
RETRY_DELAYS_S = (1.0, 4.0, 15.0)  # about 20 s in all: long enough for a GCS or NFS blip

DAMAGE, TRANSIENT, OTHER = "damage", "transient", "other"

# tensorstore and orbax report decode failures as status texts inside generic exceptions.
_DAMAGE_TEXT = ("DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION: Error reading",
                "was not found in the checkpoint", "Truncated", "Unknown frame descriptor",
                "Error opening \"zarr\" driver", "Error decoding", "corrupt")
_TRANSIENT_TEXT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED:", "Connection reset",
                   "Temporary failure", "503 Service", "429 Too Many Requests")
_TRANSIENT_ERRNO = {errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                    errno.ESTALE, errno.EINTR, errno.EBUSY}


class Refused(Exception):
    """Raised by a read on purpose (the checkpoint is intact but not this run's): `attempt`
    passes it through untouched."""


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read back; the message is one line for the user."""


class CheckpointUnavailable(CheckpointError):
    """A checkpoint's storage failed for a while (retried); nothing was moved."""


def causes(exc: BaseException):
    """`exc`, then what caused it, and so on (orbax and tensorstore wrap the errors they meet)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException) -> str:
    """DAMAGE, TRANSIENT or OTHER for an exception raised while reading a checkpoint."""
    for e in causes(exc):
        if isinstance(e, (TimeoutError, ConnectionError)) or (
                isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO):
            return TRANSIENT
        if isinstance(e, (MemoryError, PermissionError)):
            return OTHER
        if isinstance(e, (json.JSONDecodeError, FileNotFoundError)):
            return DAMAGE
        text = str(e)
        if "RESOURCE_EXHAUSTED" in text or "PERMISSION_DENIED" in text:
            return OTHER
        if any(t in text for t in _TRANSIENT_TEXT):
            return TRANSIENT
        if any(t in text for t in _DAMAGE_TEXT):
            return DAMAGE
    return OTHER


_KINDS = ("", DAMAGE, OTHER, TRANSIENT)  # agreement: the highest any process saw wins


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # DAMAGE, OTHER or TRANSIENT
    problem: str  # its first cause, one line

    def error(self, step: int, path) -> CheckpointError:
        """What stops the run when the fault is not damage: nothing is moved."""
        if self.kind == TRANSIENT:
            return CheckpointUnavailable(
                f"checkpoint {step} ({path}) could not be read after {len(RETRY_DELAYS_S)} "
                f"retries: {self.problem}; nothing was moved; rerun the same command (exit "
                f"code {TRANSIENT_EXIT_CODE}: the launchers rerun it a few times)")
        return CheckpointError(
            f"checkpoint {step} ({path}) could not be read: {self.problem}; this is not damage "
            "in its files, so nothing was moved; fix the cause and rerun the same command")


def attempt(read: Callable[..., Any], *args) -> tuple[Any, Fault | None]:
    """(read(*args), None), or (None, the fault) with transient faults retried first; every
    process gets the same answer (they must move, or not move, the same step)."""
    fault = None
    for delay in (*RETRY_DELAYS_S, None):
        try:
            value, fault = read(*args), None
            break
        except Refused:
            raise
        except Exception as e:  # orbax, tensorstore and json raise many types for bad bytes
            fault = Fault(classify(e), cause_line(e))
            if fault.kind != TRANSIENT or delay is None:
                break
            log.warning("reading a checkpoint failed (%s); retrying in %.0f s", fault.problem,
                        delay)
            time.sleep(delay)
    fault = _agreed(fault)
    return (None, fault) if fault else (value, None)


def _agreed(fault: Fault | None) -> Fault | None:
    """The worst fault any process saw, on every process (process 0's text where it has one)."""
    if jax.process_count() == 1:
        return fault
    from jax.experimental import multihost_utils

    code = _KINDS.index(fault.kind) if fault else 0
    codes_P = np.asarray(multihost_utils.process_allgather(np.int32(code)))
    worst = int(codes_P.max())
    if worst == 0:
        return None
    if fault is not None and _KINDS.index(fault.kind) == worst:
        return fault
    return Fault(_KINDS[worst], f"unreadable on process(es) "
                 f"{np.flatnonzero(codes_P == worst).tolist()}")
