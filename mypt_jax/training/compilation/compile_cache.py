"""JAX's persistent compilation cache, on by default, and what each compile cost.

`use(dir)` points JAX at `compilation_cache_dir` ("auto": `$XDG_CACHE_HOME/mypt_jax/xla`,
else `~/.cache/mypt_jax/xla`; "" turns it off) before anything compiles, with no minimum
compile time or entry size, so every program of a run is kept: the next phase, a rerun and a
resume load the programs compiled before instead of compiling them again. A `gs://` path
works on a pod (JAX writes it through etils' epath), shared by every host.

`Timed` measures one compile in the thread that runs it: its seconds and whether a cache
answered it (JAX reports persistent-cache hits and misses through `jax.monitoring` events,
in the compiling thread; a program this process compiled before raises neither). `Timings` remembers measured compile seconds and step rates in the cache folder,
for the next run's shape plan.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import jax

_local = threading.local()
_listening = False
_current: str | None = None
TIMINGS_FILE = "mypt_jax_timings.json"


def resolve_dir(value: str) -> str:
    """The folder a `compilation_cache_dir` value names ("" = off)."""
    if value != "auto":
        return os.path.expanduser(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mypt_jax", "xla")


def current() -> str | None:
    """The folder `use` pointed the cache at ("" = off), None before any run set it."""
    return _current


def use(value: str) -> str:
    """Points JAX's persistent cache at `value` (resolved); returns the folder, "" when off."""
    global _current
    path = resolve_dir(value)
    _listen()
    if path == _current:
        return path
    from jax.experimental.compilation_cache import compilation_cache as cc

    jax.config.update("jax_enable_compilation_cache", bool(path))
    jax.config.update("jax_compilation_cache_dir", path or None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # keep every entry
    if _current is not None or path:
        cc.reset_cache()  # JAX opens its cache once per process; a new folder needs a reset
    _current = path
    return path


def _listen() -> None:
    global _listening
    if _listening:
        return

    def on_event(name: str, **_: Any) -> None:
        events = getattr(_local, "events", None)
        if events is not None and name.startswith("/jax/compilation_cache/cache_"):
            events.append(name.rsplit("/", 1)[1])

    jax.monitoring.register_event_listener(on_event)
    _listening = True


class Timed:
    """`with Timed() as t: lowered.compile()` -> t.seconds, t.cache_hit (None: no cache)."""

    def __enter__(self) -> Timed:
        _listen()
        _local.events = []
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        events, _local.events = _local.events, None
        if "cache_misses" in events:
            self.cache_hit = False
        elif "cache_hits" in events or _current:
            # No event at all: JAX answered from its in-process cache, nothing was compiled.
            self.cache_hit = True
        else:
            self.cache_hit = None  # the persistent cache is off


class Timings:
    """Measured compile seconds and step FLOP rates per program family, kept beside the
    cache (a JSON file) so the next run's shape plan costs shapes from measurements."""

    def __init__(self, cache_dir: str, family: str):
        self.path = Path(cache_dir) / TIMINGS_FILE if cache_dir and "://" not in cache_dir else None
        self.family = family

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text()) if self.path else {}
        except (OSError, ValueError):
            return {}  # a missing or damaged file is only a lost hint

    def get(self) -> dict[str, float]:
        return self._read().get(self.family, {})

    def update(self, **values: float) -> None:
        if self.path is None:
            return
        data = self._read()
        data.setdefault(self.family, {}).update(values)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only cache still serves programs
