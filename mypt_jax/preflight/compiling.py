"""Compiling for a target: this machine's devices or a named TPU/GPU slice (compile-only),
one program at a time, with its memory, fit, costs and roofline (`report.py` and
`curriculum.py` build their reports from these).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
from ml_collections import config_dict

from mypt_jax.parallel import device_memory as dm
from mypt_jax.preflight import chips, hlo_cost
from mypt_jax.preflight import programs as tp
from mypt_jax.preflight import topology as topo_lib
from mypt_jax.training.setup import config as cfg_lib

# ----------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # a topology name, or "local"
    devices: list
    hosts: int
    chip: chips.Chip | None  # None: this machine's CPU (no roofline)
    capacity: int | None  # bytes a program may use per device; None = host memory decides
    host_memory: int | None  # bytes of RAM of this machine (local targets only)
    slices: int = 1  # TPU slices of the topology, joined over DCN


def host_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def target_for(name: str | None, slices: int = 1) -> Target:
    """Compile-only devices of a named slice (`slices` of them), or this machine's devices."""
    if name:
        topo = topo_lib.get(name)
        devices = topo_lib.compile_only_devices(topo, slices)
        capacity = topo.chip.hbm_bytes
        if topo.platform == "cuda":
            capacity *= dm.GPU_MEM_FRACTION
        return Target(topo.name, devices, topo.hosts * slices, topo.chip, int(capacity), None,
                      slices)
    devices = jax.devices()
    chip = chips.chip_for_device_kind(devices[0].device_kind)
    return Target("local", devices, jax.process_count(), chip,
                  dm.device_capacity(devices[0]), host_memory_bytes())


def platform_of(target: Target) -> str:
    """The backend name the run's cost prior is keyed by ("cpu", "gpu", "tpu")."""
    return target.chip.platform.replace("cuda", "gpu") if target.chip else "cpu"


# ----------------------------------------------------------------------------------------
# Compiling
# ----------------------------------------------------------------------------------------


def _xla_cost(compiled: Any) -> dict[str, float] | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - compile-only GPU clients give none
        return None
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost:
        return None
    return {"flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def compile_program(program: tp.Program, target: Target) -> dict[str, Any]:
    """Compiles one program for the target; its memory, fit, costs and roofline."""
    out: dict[str, Any] = {"name": program.name, "kind": program.kind, "shape": program.shape}
    t0 = time.perf_counter()
    try:
        compiled = program.lower().compile()
    except Exception as e:  # noqa: BLE001 - an out-of-memory compile is a result, not a crash
        if "cuDNN not found" in str(e):
            raise topo_lib.TopologyError(
                f"{program.name}: compiling cuDNN attention needs the cuDNN library; "
                "`pip install -e \".[cuda]\"` installs it (or pass --config.attention=xla)") from e
        if not dm.is_oom(e):
            raise
        out["compile_s"] = time.perf_counter() - t0
        need_have = dm.parse_oom(str(e))
        out["fits"] = False
        out["error"] = str(e).splitlines()[0][:300]
        if need_have:
            out["memory"] = {"temporaries": need_have[0]}
            out["capacity"] = need_have[1]
        return out
    out["compile_s"] = time.perf_counter() - t0
    report = dm.from_compiled(compiled, program.resident)
    out["memory"] = report.to_dict() if report else None
    out["capacity"] = target.capacity
    problem = dm.check(report, target.capacity, program.name)
    out["fits"] = problem is None
    if problem:
        out["error"] = problem
    out["xla_cost"] = _xla_cost(compiled)
    # The HLO's bytes by kind: HBM traffic (where the program has no model of its own) and
    # the collectives' bytes for the interconnect term.
    out["hbm"] = hlo_cost.hbm_bytes(compiled.as_text()).to_dict()
    add_roofline(out, program, target)
    return out


def add_roofline(result: dict[str, Any], program: tp.Program, target: Target) -> None:
    """Model FLOPs and the roofline; HBM bytes from the program's HLO (or its own model)."""
    result["model_flops"] = program.model_flops
    result["executed_flops"] = program.executed_flops
    hbm, overlapped, collective, async_collective = program.hbm_bytes_model, 0.0, 0.0, 0.0
    if hbm is None and "hbm" in result:
        hbm, overlapped = result["hbm"]["total"], result["hbm"]["overlapped"]
    if "hbm" in result:
        collective, async_collective = result["hbm"]["link_sync"], result["hbm"]["link_async"]
    result["hbm_bytes"] = hbm
    if target.chip is not None:
        result["roofline"] = chips.roofline(
            target.chip, model_flops=program.model_flops, executed_flops=program.executed_flops,
            hbm_bytes=hbm, overlapped_bytes=overlapped, devices=len(target.devices),
            collective_bytes=collective, async_collective_bytes=async_collective)


def resolve_for(config: config_dict.ConfigDict, target: Target) -> cfg_lib.Resolved:
    return cfg_lib.resolve(config, config.workdir or "preflight", num_devices=len(target.devices),
                           process_count=target.hosts, read_files=False)
