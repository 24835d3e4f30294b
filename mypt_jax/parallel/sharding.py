"""The mesh and the one table that maps logical parameter/activation axes onto it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mypt_jax.parallel import device_mesh

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. Parameters and activations name their axes logically
# (param_table.py, transformer.py); this table alone decides where each lands on any mesh.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),  # the input batch's rows
    ("seq", None),
    # Activations inside the model (pinned by `constrain`): rows split like the batch, the
    # width never split over fsdp. Left free, XLA carried the weights' embed -> fsdp split
    # into the residual stream and kept it whole on every fsdp shard: the 750M step's
    # temporaries grew from 11.8 GB at data=8 to 39 GB at fsdp=8 (v6e-8, launch/README.md).
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("layers", None),  # the stacked (scanned) layer axis is never split
    ("embed", "fsdp"),
    ("heads", "tensor"),  # qkv output columns / proj input rows, head-major
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),  # head_dim inside the KV cache
)


def resolve_mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills one -1 entry with "the rest" and checks the product equals the device count."""
    sizes = [int(s) for s in sizes]
    if len(sizes) != len(MESH_AXES):
        raise ValueError(f"mesh needs {len(MESH_AXES)} sizes {MESH_AXES}, got {sizes}")
    named = dict(zip(MESH_AXES, sizes, strict=True))
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh sizes {named}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {named}: sizes must be >= 1 or -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh sizes {named}: {num_devices} devices are not "
                f"divisible by the fixed axes' product {fixed}"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh sizes {named} use {math.prod(sizes)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(sizes: Sequence[int] = (-1, 1, 1), devices: Sequence | None = None,
              dcn: Sequence[int] = (1, 1, 1)) -> Mesh:
    """A GSPMD-style (Auto axes) mesh over all devices: XLA propagates shardings in between.

    `sizes` are whole axes (all slices); `dcn` says how many slices each spans. Devices sit
    in the interconnect's order on TPUs and GPUs, in the listed order on CPU
    (`device_mesh.py`).
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(sizes, len(devices))
    return Mesh(device_mesh.device_array(shape, devices, dcn), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(shape))


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """A mesh axis already taken by an earlier dimension is not reused (the later one is replicated)."""
    rules = dict(LOGICAL_AXIS_RULES)
    used: set[str] = set()
    spec = []
    for axis in logical_axes:
        mesh_axes = rules.get(axis) if axis is not None else None
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        if not names or used.intersection(names):
            spec.append(None)
            continue
        used.update(names)
        spec.append(mesh_axes)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], mesh: Mesh | None) -> jax.Array:
    """Pins an activation to `mesh` by its logical axes; the identity when `mesh` is None.

    A constraint changes where XLA keeps the array, never its values (on one device it is a
    no-op).
    """
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical_axes))
