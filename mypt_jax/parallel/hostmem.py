"""Host allocator settings for the entry points: keep freed memory instead of unmapping it.

glibc serves every allocation over 32 MB with its own mmap and unmaps it on free. XLA:CPU
allocates a step's buffers afresh each call, so a step that writes [N, V] logits (412 MB
for 8 x 256 positions of a 50304 vocabulary) page-faults all of it in again every step:
~100k faults, about 0.07 s for that one buffer on the 2-core benchmark machine.
tcmalloc and jemalloc keep freed pages; on glibc, `mallopt` can be told to do the same.

Measured (benchmarks/README.md): the small-shape float32 train step 1.44 -> 1.30 s.
The cost is that the process keeps its peak heap instead of returning it to the OS, which
is what a training process does anyway. Set MYPT_MALLOC_TUNING=0 to leave glibc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def allocator() -> str:
    """'glibc', or the name of a preloaded allocator (tcmalloc, jemalloc, mimalloc)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for name in _OTHER_ALLOCATORS:
        if name in maps:
            return name
    return "glibc"


def keep_freed_memory() -> bool:
    """On Linux with glibc's malloc: no mmap per large buffer, no trimming, one arena.

    One arena because an allocation from one of XLA's worker threads otherwise lands in a
    per-thread arena that cannot hold it and falls back to mmap anyway. Returns whether the
    settings were applied. Call it early, before the large buffers are allocated.
    """
    if (os.environ.get("MYPT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux")
            or allocator() != "glibc"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1)))
