"""Does a compiled program fit its device? XLA's memory accounting, read one way everywhere.

Per device, a program needs its arguments, its outputs (less what is donated: an output
written over a donated argument is counted once), its temporaries and its code:

    required = arguments + outputs - aliased + temporaries + generated code (+ resident)

`resident` is what stays in device memory while the program runs without being one of its
arguments (the optimizer state during an eval or a generation). The TPU compiler refuses a
program whose temporaries cannot fit and says so; `parse_oom` reads that message.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# launch/gpu.py's default XLA_PYTHON_CLIENT_MEM_FRACTION: the share of a GPU's memory the
# JAX client preallocates, so the most a program may use (tests/test_preflight.py checks
# that the two agree).
GPU_MEM_FRACTION = 0.90


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    resident: int = 0

    @property
    def required(self) -> int:
        return (self.arguments + self.outputs - self.aliased + self.temporaries + self.code
                + self.resident)

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "required": self.required}


def from_compiled(compiled: Any, resident: int = 0) -> MemoryReport | None:
    """XLA's per-device accounting of a `jax.stages.Compiled`; None where it gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return MemoryReport(
        arguments=int(m.argument_size_in_bytes), outputs=int(m.output_size_in_bytes),
        aliased=int(m.alias_size_in_bytes), temporaries=int(m.temp_size_in_bytes),
        code=int(m.generated_code_size_in_bytes), resident=resident)


_OOM_PATTERNS = (
    # "the total memory required for HLO temporaries (41.41G) exceeds available HBM (15.75G)"
    re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"),
    # "Used 33.27G of 30.75G hbm. Exceeded hbm capacity by 2.52G."
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_oom(message: str) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from an XLA out-of-memory compile error, else None."""
    for pattern in _OOM_PATTERNS:
        m = pattern.search(message)
        if m:
            need, need_unit, have, have_unit = m.groups()
            return int(float(need) * _UNITS[need_unit]), int(float(have) * _UNITS[have_unit])
    return None


def is_oom(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or parse_oom(text) is not None


def check(report: MemoryReport | None, capacity: int | None, what: str) -> str | None:
    """None if `report` fits in `capacity` bytes (or either is unknown), else the problem."""
    if report is None or not capacity or report.required <= capacity:
        return None
    return (f"{what} needs {report.required / 2**30:.2f} GiB per device ({report.temporaries / 2**30:.2f} "
            f"GiB temporaries, {report.arguments / 2**30:.2f} GiB arguments) but the device has "
            f"{capacity / 2**30:.2f} GiB")


def local_device(mesh) -> Any:
    """The first device of `mesh` this process addresses: another host's devices answer no
    memory questions (jax raises "only supported for addressable devices")."""
    import jax

    return next(d for d in mesh.devices.flat if d.process_index == jax.process_index())


def device_capacity(device: Any) -> int | None:
    """Bytes a program may use on a real accelerator (its allocator's limit); None on CPU."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or not stats.get("bytes_limit"):
        return None
    return int(stats["bytes_limit"])
