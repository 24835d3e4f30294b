"""The mesh's device order: the listed order on CPU, the torus's on compile-only TPU slices.

Expected layouts are computed here from the devices' own coords and process indices, not
from the code under test.
"""

import itertools
import logging

import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils

from mypt_jax.parallel import device_mesh, sharding
from mypt_jax.preflight import report as preflight
from mypt_jax.preflight import topology
from mypt_jax.training.setup import config as cfg_lib

DCN = "^mesh_dcn_data/mesh_dcn_fsdp/mesh_dcn_tensor: "


def _ids(mesh_or_array):
    array = getattr(mesh_or_array, "devices", mesh_or_array)
    return np.vectorize(lambda d: d.id)(array)


def _tiny(**overrides):
    from configs import cpu_tiny

    c = cpu_tiny.get_config()
    for k, v in overrides.items():
        c[k] = v
    return c


def _resolve(num_devices=8, **overrides):
    return cfg_lib.resolve(_tiny(**overrides), "unused", num_devices=num_devices,
                           process_count=1, read_files=False)


_DEVICES: dict = {}


@pytest.fixture
def tpu(monkeypatch):
    """Compile-only devices of a named slice (`slices` of them), built once per process."""
    pytest.importorskip("libtpu")
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server here
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another process may hold libtpu

    def devices(name, slices=1):
        if (name, slices) not in _DEVICES:
            _DEVICES[name, slices] = topology.compile_only_devices(topology.get(name), slices)
        return _DEVICES[name, slices]

    return devices


# ----------------------------------------------------------------------------- properties


def _groups(array, axis):
    """The 1-D runs of devices along `axis` (every other index held fixed)."""
    moved = np.moveaxis(array, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _is_box(group):
    """The devices fill a box of the torus: each coordinate a contiguous range, no repeats."""
    coords = np.array([d.coords for d in group])
    spans = [len(range(c.min(), c.max() + 1)) for c in coords.T]
    return (len({tuple(c) for c in coords}) == len(group) == np.prod(spans)
            and all(set(c) == set(range(c.min(), c.max() + 1)) for c in coords.T))


def _is_strided_box(group):
    """Like a box, but each coordinate may step by a constant stride (z in {0, 2})."""
    coords = np.array([d.coords for d in group])
    values = [sorted(set(c)) for c in coords.T]
    even = all(len(set(np.diff(v))) <= 1 for v in values)
    return even and {tuple(c) for c in coords} == set(itertools.product(*values)) and len(
        group) == np.prod([len(v) for v in values])


def _hops(a, b):
    return int(np.abs(np.array(a.coords) - np.array(b.coords)).sum())


def _host_major(array):
    """Process p holds one run of the (data x fsdp) batch blocks, in process order."""
    data, fsdp, tensor = array.shape
    blocks = array.reshape(data * fsdp, tensor)
    owners = [{d.process_index for d in block} for block in blocks]
    return all(len(o) == 1 for o in owners) and [min(o) for o in owners] == sorted(
        min(o) for o in owners)


def _shapes(n):
    return [s for s in itertools.product((1, 2, 4, 8, 16), repeat=3) if np.prod(s) == n]


# ----------------------------------------------------------------------------- CPU


def _cpu8():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 CPU devices (XLA_FLAGS set before another module started jax)")
    return jax.devices()


@pytest.mark.parametrize("sizes", [(-1, 1, 1), (2, 2, 2), (1, -1, 2), (1, 8, 1), (4, 1, 2)])
def test_cpu_mesh_is_the_listed_devices_reshaped(sizes):
    devices = _cpu8()
    mesh = sharding.make_mesh(sizes)
    shape = sharding.resolve_mesh_shape(sizes, 8)
    np.testing.assert_array_equal(_ids(mesh), _ids(np.asarray(devices).reshape(shape)))
    assert mesh.axis_names == sharding.MESH_AXES


def test_slices_need_devices_with_a_slice_index():
    _cpu8()
    with pytest.raises(device_mesh.MeshError, match=DCN + r"\(2, 1, 1\).*no slice_index"):
        sharding.make_mesh((2, 4, 1), dcn=(2, 1, 1))
    r = _resolve(mesh_dcn_data=2, mesh_data=1, mesh_fsdp=-1)
    with pytest.raises(cfg_lib.ConfigError, match=DCN + ".*slice_index"):
        cfg_lib.mesh_for(r)
    with pytest.raises(device_mesh.MeshError, match=DCN + "expected 3 slice counts"):
        sharding.make_mesh((2, 4, 1), dcn=(3, 1, 1))


# ----------------------------------------------------------------------------- config


def test_config_multiplies_the_per_slice_axes_by_the_slices():
    r = _resolve(num_devices=16, mesh_dcn_data=2, mesh_data=1, mesh_fsdp=-1, batch_size=16)
    assert (r.mesh_shape, r.mesh_dcn_shape) == ((2, 8, 1), (2, 1, 1))
    r = _resolve(num_devices=16, mesh_dcn_fsdp=2, mesh_data=1, mesh_fsdp=-1, batch_size=16)
    assert (r.mesh_shape, r.mesh_dcn_shape) == ((1, 16, 1), (1, 2, 1))
    r = _resolve(num_devices=16, mesh_dcn_data=4, mesh_data=-1, batch_size=16)
    assert (r.mesh_shape, r.mesh_dcn_shape) == ((16, 1, 1), (4, 1, 1))
    assert _resolve().mesh_dcn_shape == (1, 1, 1)


@pytest.mark.parametrize("overrides, pattern", [
    ({"mesh_dcn_data": 3}, DCN + r"\(3, 1, 1\) makes 3 slices .* do not divide the 8 devices"),
    ({"mesh_dcn_fsdp": 0}, DCN + "expected slice counts >= 1"),
    ({"mesh_dcn_data": -1}, DCN + "expected slice counts >= 1"),
    ({"mesh_dcn_tensor": 2}, "^mesh_dcn_tensor: .*expected 1"),
    ({"mesh_dcn_fsdp": 2, "mesh_data": 2, "mesh_fsdp": -1}, "^mesh_dcn_fsdp: .*mesh_data"),
    ({"mesh_dcn_data": 2, "mesh_data": 3}, "^mesh_data/mesh_fsdp/mesh_tensor: .*per slice"),
    ({"mesh_dcn_data": 2, "mesh_data": 4, "batch_size": 4},
     r"^batch_size: .*\(mesh_data \* mesh_dcn_data\) \* \(mesh_fsdp \* mesh_dcn_fsdp\) = 4\*2"),
])  # fmt: skip
def test_config_errors_name_the_mesh_fields(overrides, pattern):
    with pytest.raises(cfg_lib.ConfigError, match=pattern):
        _resolve(num_devices=8, **overrides)


# ----------------------------------------------------------------------------- one TPU slice


@pytest.mark.parametrize("shape", _shapes(4))
def test_v5p_8_mesh_is_create_device_mesh(tpu, shape):
    devices = tpu("v5p-8")
    mesh = sharding.make_mesh(shape, devices)
    np.testing.assert_array_equal(_ids(mesh), _ids(mesh_utils.create_device_mesh(shape, devices)))
    for axis in range(3):
        assert all(_is_box(g) for g in _groups(mesh.devices, axis)), (shape, axis)


def test_v5p_8_order_is_not_the_listed_one_and_pairs_are_neighbours(tpu):
    devices = tpu("v5p-8")
    listed = [d.id for d in devices]
    # The whole 2x2 torus on one axis: create_device_mesh runs y-minor, the ids x-minor.
    assert _ids(sharding.make_mesh((1, 4, 1), devices)).ravel().tolist() != listed
    for shape in [(1, 2, 2), (2, 2, 1), (2, 1, 2)]:
        inner = max(i for i, s in enumerate(shape) if s > 1)
        for a, b in _groups(sharding.make_mesh(shape, devices).devices, inner):
            assert _hops(a, b) == 1, (shape, a.coords, b.coords)


@pytest.mark.parametrize("shape", [s for s in _shapes(16) if s[2] <= 4])
def test_v5p_32_mesh_follows_the_torus_and_keeps_hosts_whole(tpu, shape, caplog):
    devices = tpu("v5p-32")  # 2x2x4 chips, one host per z plane
    with caplog.at_level(logging.WARNING):
        mesh = sharding.make_mesh(shape, devices)
    assert not caplog.records  # create_device_mesh accepted every shape (some by splitting)
    assert _host_major(mesh.devices), shape
    try:
        raw, split = mesh_utils.create_device_mesh(shape, devices), False
    except NotImplementedError:  # no whole physical axes fit: z (4) is split between axes
        raw = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        split = True
    # fsdp and tensor each fill a box of the torus. data does too where create_device_mesh
    # already ran host-major (the mesh is then exactly its); elsewhere keeping hosts whole
    # splits z between data and fsdp, and data strides along z.
    for axis in (1, 2):
        assert all(_is_box(g) for g in _groups(mesh.devices, axis)), (shape, axis)
    if _host_major(raw) and not split:
        np.testing.assert_array_equal(_ids(mesh), _ids(raw))
        assert all(_is_box(g) for g in _groups(mesh.devices, 0)), shape
    for group in _groups(mesh.devices, 0):
        assert _is_strided_box(group), (shape, [d.coords for d in group])
    if shape[2] == 2:
        for a, b in _groups(mesh.devices, 2):
            assert _hops(a, b) == 1, (shape, a.coords, b.coords)
    # Within each host, the devices keep create_device_mesh's order.
    def of_host(array, host):
        return [d.id for d in array.ravel() if d.process_index == host]

    for host in range(4):
        assert of_host(mesh.devices, host) == of_host(raw, host), (shape, host)


def test_v5p_32_fsdp_over_every_device(tpu):
    devices = tpu("v5p-32")
    raw = mesh_utils.create_device_mesh((1, 16, 1), devices)
    # create_device_mesh alone runs z-minor: all four hosts interleave along the batch.
    assert [d.process_index for d in raw.ravel()][:4] == [0, 1, 2, 3]
    mesh = sharding.make_mesh((1, 16, 1), devices)
    assert [d.process_index for d in mesh.devices.ravel()] == [p for p in range(4) for _ in range(4)]
    assert _ids(mesh).ravel().tolist() != list(range(16))  # not the listed order either
    # A shape create_device_mesh already lays host-major is kept as it gives it.
    np.testing.assert_array_equal(_ids(sharding.make_mesh((4, 2, 2), devices)),
                                  _ids(mesh_utils.create_device_mesh((4, 2, 2), devices)))


def test_a_refused_shape_falls_back_to_the_listed_order_with_a_warning(tpu, caplog):
    devices = tpu("v5p-8", slices=2)  # two slices whose coords repeat: no single torus
    with caplog.at_level(logging.WARNING, logger="mypt_jax.parallel.device_mesh"):
        mesh = sharding.make_mesh((8, 1, 1), devices)
    assert "mesh (8, 1, 1): create_device_mesh refused it" in caplog.text
    assert _ids(mesh).ravel().tolist() == [d.id for d in devices]


# ----------------------------------------------------------------------------- slices (DCN)


def test_compile_only_slices_carry_a_slice_index(tpu):
    devices = tpu("v5p-8", slices=2)
    assert [d.slice_index for d in devices] == [0] * 4 + [1] * 4
    assert {tuple(d.coords) for d in devices[:4]} == {tuple(d.coords) for d in devices[4:]}


def test_hybrid_mesh_puts_the_slices_on_the_dcn_axis(tpu):
    devices = tpu("v5p-8", slices=2)
    mesh = sharding.make_mesh((2, 4, 1), devices, dcn=(2, 1, 1))
    for row in range(2):
        assert {d.slice_index for d in mesh.devices[row].ravel()} == {row}
        one = [d for d in devices if d.slice_index == row]
        np.testing.assert_array_equal(_ids(mesh.devices[row:row + 1]),
                                      _ids(mesh_utils.create_device_mesh((1, 4, 1), one)))
    # fsdp over both slices (data 1): the first four fsdp positions are slice 0's.
    mesh = sharding.make_mesh((1, 8, 1), devices, dcn=(1, 2, 1))
    assert [d.slice_index for d in mesh.devices.ravel()] == [0] * 4 + [1] * 4
    with pytest.raises(device_mesh.MeshError, match=DCN + r"\(4, 1, 1\) asks for 4 slices"):
        sharding.make_mesh((4, 2, 1), devices, dcn=(4, 1, 1))


def test_hybrid_mesh_of_two_v5p_32_keeps_hosts_whole(tpu):
    devices = tpu("v5p-32", slices=2)
    mesh = sharding.make_mesh((2, 16, 1), devices, dcn=(2, 1, 1))
    assert _host_major(mesh.devices)
    assert [d.slice_index for d in mesh.devices[:, :, 0].ravel()] == [0] * 16 + [1] * 16
    assert all(_is_box(g) for g in _groups(mesh.devices[:1], 1))


def test_config_mesh_for_on_two_slices(tpu):
    devices = tpu("v5p-8", slices=2)
    r = _resolve(mesh_dcn_data=2, mesh_data=1, mesh_fsdp=-1)
    mesh = cfg_lib.mesh_for(r, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert [d.slice_index for d in mesh.devices[:, 0, 0]] == [0, 1]


# ----------------------------------------------------------------------------- the report


def test_preflight_shows_the_device_order(tpu):
    target = preflight.Target("v5p-32", tpu("v5p-32"), 4, None, None, None)
    r = preflight.resolve_for(_tiny(mesh_data=1, mesh_fsdp=-1, batch_size=16), target)
    shown = preflight.mesh_devices(cfg_lib.mesh_for(r, target.devices), target)
    lines = preflight.format_mesh_devices(shown)
    assert "listed order: no" in lines[0] and len(lines) == 2
    label, cells = lines[1].split(": ")
    assert label.strip() == "data 0 host 0-3"
    runs = cells.split(" | ")
    by_id = {d.id: d for d in target.devices}
    assert len(runs) == 4
    for host, run in enumerate(runs):
        for cell in run.split():
            device = by_id[int(cell.split("(")[0])]
            assert cell == f"{device.id}({','.join(map(str, device.coords))})"
            assert device.process_index == host
    assert shown["coords"][0][0][0] == list(by_id[shown["ids"][0][0][0]].coords)


def test_preflight_device_order_on_cpu_is_the_listed_one():
    devices = _cpu8()
    target = preflight.Target("local", devices, 1, None, None, None)
    r = preflight.resolve_for(_tiny(mesh_data=2, mesh_fsdp=-1, mesh_tensor=2), target)
    shown = preflight.mesh_devices(cfg_lib.mesh_for(r, devices), target)
    lines = preflight.format_mesh_devices(shown)
    assert lines[0].endswith("listed order: yes):") and "coords" not in shown
    assert lines[1:] == ["  data 0: [0 1] [2 3]", "  data 1: [4 5] [6 7]"]
