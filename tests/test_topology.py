"""Named slices: device counts, chips, the GPU target description."""

import pytest

from mypt_jax.preflight import topology


@pytest.mark.parametrize("name, chip, devices, hosts", [
    ("v4-8", "v4", 4, 1), ("v5e-8", "v5e", 8, 1), ("v5p-8", "v5p", 4, 1), ("v5p-32", "v5p", 16, 4),
    ("v6e-8", "v6e", 8, 1), ("1xH100", "h100", 1, 1), ("8xh100", "h100", 8, 1),
    ("8xh200", "h200", 8, 1),
])  # fmt: skip
def test_names(name, chip, devices, hosts):
    t = topology.get(name)
    assert (t.chip.name, t.devices, t.hosts) == (chip, devices, hosts)
    if t.platform == "tpu":
        # Cloud TPU naming: v4/v5p count TensorCores (2 per chip, one megacore device).
        per_chip = 2 if t.megacore else 1
        assert int(name.split("-")[1]) == t.devices * per_chip


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(topology.TopologyError, match="v5p-8"):
        topology.get("v9-8")


def test_gpu_target_states_the_device():
    text = topology.gpu_target_config(topology.get("8xh100").chip)
    assert "core_count: 132" in text and "major: 9" in text
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
    assert "memory_bandwidth: 3350000000000" in text
    assert "memory_bandwidth: 4800000000000" in topology.gpu_target_config(
        topology.get("1xh200").chip)


def test_gpu_compiles_get_the_launch_scripts_xla_flags():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    assert topology.GPU_XLA_FLAGS == gpu.DEFAULT_XLA_FLAGS


def test_several_slices_only_for_tpu_topologies():
    # Refused before any plugin loads: the CUDA client has no slices to join over DCN.
    with pytest.raises(topology.TopologyError, match="--slices 2: .*8xh100 is cuda"):
        topology.compile_only_devices(topology.get("8xh100"), slices=2)
    with pytest.raises(topology.TopologyError, match="--slices 0"):
        topology.compile_only_devices(topology.get("v5p-8"), slices=0)
