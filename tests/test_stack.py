"""The TPU-compiling entry points re-execute themselves with an unlimited stack."""

import resource
import subprocess
import sys

PROBE = ("import os, resource, sys\n"
         "from mypt_jax.parallel import stack\n"
         "print('before', os.getpid(), flush=True)\n"
         "stack.unlimited_for_tpu_compiles()\n"
         "print('after', os.getpid(), resource.getrlimit(resource.RLIMIT_STACK)[0], sys.argv[1:])\n")


def _limited(soft):
    def limit():
        resource.setrlimit(resource.RLIMIT_STACK, (soft, resource.RLIM_INFINITY))
    return limit


def test_a_limited_stack_is_raised_once_in_the_same_process():
    out = subprocess.run([sys.executable, "-c", PROBE, "x", "--y=1"], capture_output=True,
                         text=True, preexec_fn=_limited(8 << 20), timeout=120, check=True)
    lines = out.stdout.splitlines()
    # The first run prints "before" and execs; the second prints both, once.
    assert [w.split()[0] for w in lines] == ["before", "before", "after"]
    pids = {w.split()[1] for w in lines}
    assert len(pids) == 1  # exec keeps the pid (launch scripts track it)
    assert lines[-1].split(maxsplit=3)[2] == str(resource.RLIM_INFINITY)
    assert lines[-1].endswith("['x', '--y=1']")


def test_an_unlimited_stack_is_left_alone():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         preexec_fn=_limited(resource.RLIM_INFINITY), timeout=120, check=True)
    assert [w.split()[0] for w in out.stdout.splitlines()] == ["before", "after"]
