import os
import subprocess
import sys

import pytest

from mypt_jax.parallel import hostmem

# A child process, so the settings do not leak into the test session. It allocates and frees
# a 256 MB buffer twice and counts the minor page faults of the second allocation: glibc's
# default maps a fresh buffer (one fault per 4 KB page), the tuned heap reuses the pages.
_CHILD = """
import ctypes, resource, sys
from mypt_jax.parallel import hostmem
applied = hostmem.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
def touch():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    return p
libc.free(touch())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc.free(touch())
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or hostmem.allocator() != "glibc",
    reason="glibc malloc on Linux only")


def _faults(env_value: str) -> tuple[str, int]:
    env = {**os.environ, "MYPT_MALLOC_TUNING": env_value}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_tuned_glibc_reuses_freed_large_buffers():
    applied, faults = _faults("1")
    assert applied == "True"
    assert faults < 1000  # 256 MB is 65536 pages


def test_opt_out_leaves_glibc_alone():
    applied, faults = _faults("0")
    assert applied == "False"
    assert faults > 30000  # the control: the check above can fail
