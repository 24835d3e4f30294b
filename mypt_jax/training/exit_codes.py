"""The errors of a run that the user can act on: each is one line and a documented exit code.

docs/resume-and-faults.md lists them: 2 the config, data or hosts were refused, 3 a NaN loss, 4 a
checkpoint could not be written or read, 74 a checkpoint's storage kept failing (retried; the
launchers rerun a few times), 75 preempted (the checkpoint is saved: rerun the
same command). Anything else is a bug and keeps its traceback. `MYPT_JAX_DEBUG=1` shows the
traceback of these too.
"""

from __future__ import annotations

import os

from mypt_jax.interop import upstream_cli
from mypt_jax.training.checkpoint import manager as checkpoint
from mypt_jax.training.checkpoint import preemption, read_faults
from mypt_jax.training.setup import agreement, identity
from mypt_jax.training.setup.config import ConfigError

DEBUG_ENV = "MYPT_JAX_DEBUG"

_KINDS = (
    ((ConfigError, upstream_cli.UpstreamConfigError), 2, "config error"),
    ((identity.DataChangedError, agreement.HostsDisagree), 2, "error"),
    ((FloatingPointError,), 3, "training stopped"),
    ((read_faults.CheckpointUnavailable,), read_faults.TRANSIENT_EXIT_CODE, "checkpoint error"),
    ((checkpoint.CheckpointError,), 4, "checkpoint error"),
    ((preemption.Preempted,), preemption.PREEMPTED_EXIT_CODE, "preempted"),
)


def user_error(e: BaseException) -> tuple[int, str] | None:
    """(exit code, "prefix: message") for an error the user can act on, else None."""
    if os.environ.get(DEBUG_ENV):
        return None
    for kinds, code, prefix in _KINDS:
        if isinstance(e, kinds):
            return code, f"{prefix}: {e}"
    return None
