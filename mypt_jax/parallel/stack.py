"""An unlimited stack for the processes that compile for TPUs.

libtpu 0.0.42's compiler overflows the stack of a compile thread on some programs: the 750M
Phase 3a train step with remat "dots" and the einsum attention, at batch shape 16 x 256 on
v5p-8, dies with SIGSEGV ("STACK OVERFLOW" in FusedSpatialMajorConvolution::MakeConvWindows)
under stack limits of 8, 16, 32 and 128 MB, and compiles under `ulimit -s unlimited`
(compile-only on this project's CI machine). The threads take their stack size from the
limit the process started with, so raising it takes a new process: the entry points that
compile (`mypt_jax.train`, `mypt_jax.preflight`) re-execute themselves once with the soft
limit raised to the hard one, when libtpu is installed and the hard limit allows it.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import sys

_MARK = "MYPT_STACK_UNLIMITED"  # set in the re-executed process: never loop


def unlimited_for_tpu_compiles() -> None:
    """Re-executes this process (same argv, same pid) with an unlimited stack, if needed."""
    if os.environ.get(_MARK) or importlib.util.find_spec("libtpu") is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or hard != resource.RLIM_INFINITY:
        return  # already unlimited, or not ours to raise
    resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, hard))
    os.environ[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    # A stop sent during the exec waits, blocked (the mask and pending signals survive exec),
    # for the new process's handler: training/checkpoint/preemption.install unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    os.execv(sys.executable, sys.orig_argv)
