"""Suite-wide setup: one persistent compilation cache per test run, and the longest files first.

Runs default to `compilation_cache_dir="auto"` ($XDG_CACHE_HOME/mypt_jax/xla). Pointing
XDG_CACHE_HOME at a folder of this test run keeps the suite off the user's cache and lets tests
(and the processes they start, which inherit the variable) reuse each other's programs. Under
pytest-xdist every worker points at the controller's folder, so the workers share their programs
too (JAX writes each cache entry atomically).
"""

import os
import shutil
import tempfile
from pathlib import Path

from train_helpers import xla_flags

# An xdist worker inherits the controller's environment, so it finds the controller's folder.
_SHARED = "MYPT_JAX_TEST_CACHE"
_OWNER = _SHARED not in os.environ
if _OWNER:
    os.environ[_SHARED] = tempfile.mkdtemp(prefix="mypt_jax_test_cache_")
_SESSION_CACHE = os.environ[_SHARED]
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE
# The suite's process simulates 8 CPU devices (the sharded cases), and compiles as the processes
# it starts do (train_helpers.FAST_COMPILE_FLAGS).
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# Several test processes load libtpu at once (compile-only TPU clients); without this the second
# one fails on libtpu's lock file.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# The files that take longest, started first: with `-n 2 --dist loadfile` a long file begun last
# would leave the other worker idle at the end (tests/test_cpu_curriculum.py takes 4-6 min).
LONGEST_FIRST = ("test_cpu_curriculum.py", "test_host_work.py", "test_multihost.py",
                 "test_preemption.py", "test_benchmarks.py", "test_preflight.py", "test_trace.py",
                 "test_freeze.py", "test_pipeline.py", "test_upstream_cli.py",
                 "test_upstream_configs.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable


def pytest_unconfigure(config):
    if _OWNER:  # the process that made the folder; under xdist, the controller
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)

