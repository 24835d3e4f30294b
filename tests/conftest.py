"""Suite-wide setup: one persistent compilation cache for the whole session.

Runs default to `compilation_cache_dir="auto"` ($XDG_CACHE_HOME/mypt_jax/xla). Pointing
XDG_CACHE_HOME at a session folder keeps the suite off the user's cache and lets tests (and
the processes they start, which inherit the variable) reuse each other's programs.
"""

import os
import tempfile

_SESSION_CACHE = tempfile.mkdtemp(prefix="mypt_jax_test_cache_")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
