"""Which device sits where in the mesh: the interconnect's order on TPUs and GPUs.

`jax.experimental.mesh_utils.create_device_mesh` maps every mesh axis onto whole physical
axes of a slice's chip torus (ICI), so an axis's collectives run between linked neighbours;
across slices `create_hybrid_device_mesh` lays the `mesh_dcn_*` split over the data-centre
network (DCN) and each slice's own mesh inside it. CPU devices keep the listed order,
reshaped, as before: CPU tests, loss traces and checkpoint layouts do not change.

The batch axes are then made host-major: `data/loader.global_batch` gives process p the
rows [p*b, (p+1)*b), so each process's devices must hold one run of the batch blocks, in
process order. create_device_mesh orders by torus position, not by host: on v5p-32 (one
host per z plane) its 16-way fsdp axis ran z-minor and interleaved all four hosts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.experimental import mesh_utils

log = logging.getLogger(__name__)

DCN_FIELDS = "mesh_dcn_data/mesh_dcn_fsdp/mesh_dcn_tensor"
# What mesh_utils raises for a shape it cannot lay on the torus (NotImplementedError: no
# whole physical axes fit; AssertionError: the devices are not one cuboid, e.g. two slices).
_REFUSALS = (ValueError, NotImplementedError, AssertionError)


class MeshError(ValueError):
    """Devices that cannot make the asked mesh; the message starts with the config fields."""


def _kind(devices: Sequence[Any]) -> str:
    return getattr(devices[0], "device_kind", devices[0].platform)


def _split_if_needed(build: Callable[..., np.ndarray], *args) -> np.ndarray:
    """Whole physical axes per mesh axis when they fit, else physical axes split between mesh
    axes (still neighbours: v5p-32's 2x2x4 torus has no whole axes for 2 x 2 x 4)."""
    try:
        return build(*args)
    except _REFUSALS:
        return build(*args, allow_split_physical_axes=True)


def _one_slice(shape: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
    try:
        return _split_if_needed(mesh_utils.create_device_mesh, shape, devices)
    except _REFUSALS as e:
        log.warning("mesh %s: create_device_mesh refused it for %d %s devices (%s); "
                    "using the listed device order", shape, len(devices), _kind(devices), e)
        return np.asarray(devices).reshape(shape)


def _slices(ici: tuple[int, ...], dcn: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
    n = math.prod(dcn)
    if not all(hasattr(d, "slice_index") for d in devices):
        raise MeshError(
            f"{DCN_FIELDS}: {dcn} asks for {n} slices joined over DCN, but {_kind(devices)} "
            "devices carry no slice_index (only multi-slice TPU devices do); expected 1 each")
    found = len({d.slice_index for d in devices})
    if found != n:
        raise MeshError(f"{DCN_FIELDS}: {dcn} asks for {n} slices (their product); the "
                        f"{len(devices)} devices form {found}")
    try:
        return _split_if_needed(mesh_utils.create_hybrid_device_mesh, ici, dcn, devices)
    except _REFUSALS as e:
        raise MeshError(f"mesh_data/mesh_fsdp/mesh_tensor: {ici} per slice does not fit one "
                        f"slice's {len(devices) // n} {_kind(devices)} devices: {e}") from None


def _host_major(array: np.ndarray) -> np.ndarray:
    """Batch blocks (data x fsdp, each a tensor group) ordered by (slice, process), stably.

    Hybrid meshes already run slice-major along the batch (config.py only allows the DCN
    split on data, or on fsdp when data is 1), so only hosts within a slice move.
    """
    data, fsdp, tensor = array.shape
    blocks = array.reshape(data * fsdp, tensor)

    def key(i: int) -> tuple[int, int]:
        return min((getattr(d, "slice_index", 0), d.process_index) for d in blocks[i])

    return blocks[sorted(range(len(blocks)), key=key)].reshape(array.shape)


def device_array(shape: Sequence[int], devices: Sequence[Any],
                 dcn: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """`devices` as a (data, fsdp, tensor) array of `shape`; `dcn` of each axis's size spans
    slices (the rest, `shape // dcn`, lies inside one slice)."""
    shape, dcn = tuple(int(s) for s in shape), tuple(int(d) for d in dcn)
    if len(dcn) != len(shape) or any(d < 1 or s % d for s, d in zip(shape, dcn, strict=False)):
        raise MeshError(f"{DCN_FIELDS}: expected {len(shape)} slice counts >= 1 that divide the "
                        f"mesh {shape}, got {dcn}")
    if math.prod(dcn) > 1:
        ici = tuple(s // d for s, d in zip(shape, dcn, strict=True))
        return _host_major(_slices(ici, dcn, devices))
    if devices[0].platform == "cpu":
        return np.asarray(devices).reshape(shape)
    return _host_major(_one_slice(shape, devices))


def describe(devices_array: np.ndarray) -> dict[str, Any]:
    """The mesh's device ids, and where each sits: torus coords, process, slice (if known)."""
    flat = devices_array.ravel()
    out: dict[str, Any] = {
        "ids": np.array([d.id for d in flat]).reshape(devices_array.shape).tolist(),
        "process": np.array([d.process_index for d in flat]).reshape(devices_array.shape).tolist()}
    if all(getattr(d, "coords", None) is not None for d in flat):
        coords = np.array([tuple(d.coords) for d in flat])
        out["coords"] = coords.reshape(*devices_array.shape, coords.shape[-1]).tolist()
    if all(hasattr(d, "slice_index") for d in flat):
        out["slice"] = np.array([d.slice_index for d in flat]).reshape(devices_array.shape).tolist()
    return out
