"""The chip table, the FLOP formula and the roofline arithmetic."""

import pytest

from mypt_jax.model import ModelConfig
from mypt_jax.preflight import chips

PHASE3A = ModelConfig(n_layer=32, n_embd=1280, n_head=20, block_size=512, vocab_size=50304)


@pytest.mark.parametrize("kind, name", [
    ("TPU v4", "v4"), ("TPU v5 lite", "v5e"), ("TPU v5", "v5p"), ("TPU v6 lite", "v6e"),
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100_pcie"), ("NVIDIA H200", "h200"),
])  # fmt: skip
def test_device_kinds_find_their_row(kind, name):
    assert chips.chip_for_device_kind(kind).name == name


def test_cpu_has_no_row():
    assert chips.chip_for_device_kind("cpu") is None
    assert chips.published_bf16_peak("cpu") is None


def test_phase3a_step_flops():
    # 6 N tokens + attention: ~36 TFLOP for the 750M model at batch 16, block 512 (the
    # issue's figure), of which the head projects every position.
    flops = chips.train_step_flops(PHASE3A, 16, 512)
    assert flops["total"] == pytest.approx(36.3e12, rel=0.01)
    # Projecting 8 positions per row removes almost all of the head's share.
    k8 = chips.train_step_flops(PHASE3A, 16, 512, projected=8)
    assert flops["total"] - k8["total"] == pytest.approx(flops["head"] * (1 - 8 / 512))
    assert chips.forward_flops(PHASE3A, 16, 512) == pytest.approx(flops["total"] / 3)
    # Full remat runs the blocks' forward again; the head is not rematerialised.
    full = chips.remat_flops(flops, "full")
    assert full == pytest.approx(flops["total"] + (flops["body"] + flops["attention"]) / 3)
    # "dots" keeps the weight matmuls' outputs; attention's batched matmuls run again.
    assert chips.remat_flops(flops, "dots") == pytest.approx(flops["total"] + flops["attention"] / 3)
    assert chips.remat_flops(flops, "none") == flops["total"]


def test_roofline_adds_compute_and_the_memory_it_cannot_overlap():
    chip = chips.CHIPS["v5p"]
    r = chips.roofline(chip, model_flops=4 * 459e12, executed_flops=4 * 459e12,
                       hbm_bytes=2765e9, devices=4)
    assert r["compute_s"] == pytest.approx(1.0) and r["memory_s"] == pytest.approx(1.0)
    assert r["step_s"] == pytest.approx(2.0) and r["step_s_bound"] == pytest.approx(1.0)
    assert r["mfu"] == pytest.approx(0.5) and r["mfu_bound"] == pytest.approx(1.0)
    # Matmul and async-copy traffic overlaps the compute: 0.6 s of it hides under 1 s of
    # FLOPs; 1.5 s
    # of it does not, and only its excess over the compute shows.
    hidden = chips.roofline(chip, model_flops=4 * 459e12, executed_flops=4 * 459e12,
                            hbm_bytes=2765e9, overlapped_bytes=0.6 * 2765e9, devices=4)
    assert hidden["step_s"] == pytest.approx(1.4) and hidden["overlapped_memory_s"] == pytest.approx(0.6)
    slow = chips.roofline(chip, model_flops=4 * 459e12, executed_flops=4 * 459e12,
                          hbm_bytes=2 * 2765e9, overlapped_bytes=1.5 * 2765e9, devices=4)
    assert slow["step_s"] == pytest.approx(1.5 + 0.5)
    no_bytes = chips.roofline(chip, model_flops=1e12, executed_flops=1e12, hbm_bytes=None, devices=1)
    # Without bytes (compile-only GPU) only the compute bound is known.
    assert no_bytes["memory_s"] is None and no_bytes["step_s"] is None and no_bytes["mfu"] is None
    assert no_bytes["mfu_bound"] == pytest.approx(1.0)


def test_collectives_cross_the_interconnect_after_the_compute():
    chip = chips.CHIPS["v5p"]
    base = dict(model_flops=4 * 459e12, executed_flops=4 * 459e12, hbm_bytes=0.0, devices=4)
    alone = chips.roofline(chip, **base)
    linked = chips.roofline(chip, **base, collective_bytes=chip.link_bandwidth / 2)
    assert alone["collective_s"] == 0.0
    assert linked["collective_s"] == pytest.approx(0.5)
    assert linked["step_s"] == pytest.approx(alone["step_s"] + 0.5)
    assert all(c.link_bandwidth > 0 for c in chips.CHIPS.values())
