"""No libtpu probe without a TPU: parallel/platforms.py chooses JAX's backends unless the user did."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import REPO, make_dataset, train_cli, xla_flags

from mypt_jax.parallel import platforms

# What libtpu prints when it probes a host that has no TPU (jax 0.10.2, libtpu 0.0.42).
LIBTPU_NOISE = ("host bounds", "TPU_WORKER_HOSTNAMES", "Source Location Trace", "libtpu",
                "TPU accelerator type")


def _fake_pci(root, vendor: str):
    (root / "0000:00:04.0").mkdir(parents=True)
    (root / "0000:00:04.0" / "vendor").write_text(vendor + "\n")
    return str(root)


def test_a_tpu_vm_and_a_users_choice_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(platforms, "_user_chose", lambda: False)
    monkeypatch.setattr(platforms, "_installed", lambda module: module == "libtpu")
    monkeypatch.setattr(platforms, "PCI_DEVICES", _fake_pci(tmp_path / "tpu", "0x1ae0"))
    assert platforms.has_tpu_chip()
    assert platforms.skip_tpu_probe_without_tpu() is None

    monkeypatch.setattr(platforms, "PCI_DEVICES", _fake_pci(tmp_path / "cpu", "0x8086"))
    monkeypatch.setattr(platforms.os.path, "exists", lambda path: False)  # no GPU device either
    assert not platforms.has_tpu_chip()
    assert platforms.platforms_without_tpu() == "cpu"
    monkeypatch.setattr(platforms, "_user_chose", lambda: True)
    assert platforms.skip_tpu_probe_without_tpu() is None
    monkeypatch.setattr(platforms, "_user_chose", lambda: False)
    monkeypatch.setattr(platforms, "_installed", lambda module: False)  # no tpu extra: no probe
    assert platforms.skip_tpu_probe_without_tpu() is None


def test_a_gpu_host_keeps_its_gpu(monkeypatch):
    monkeypatch.setattr(platforms.os.path, "exists", lambda p: p == "/dev/nvidia0")
    monkeypatch.setattr(platforms, "_installed", lambda module: module == "jax_cuda12_plugin")
    assert platforms.platforms_without_tpu() == "cuda,cpu"
    monkeypatch.setattr(platforms, "_installed", lambda module: False)
    assert platforms.platforms_without_tpu() == "cpu"  # what JAX would fall back to anyway


def _quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = xla_flags(1)
    # A libtpu that finds its lock file taken (another JAX process here) fails without a word:
    # this makes it speak whatever else runs, so that the test sees the noise when there is some.
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    return env


def test_a_cpu_training_run_prints_no_libtpu_line(tmp_path):
    pytest.importorskip("libtpu", reason="the tpu extra is what makes the noise")
    if platforms.has_tpu_chip():
        pytest.skip("a TPU host: the probe is wanted here")
    overrides = {"dataset_dir": make_dataset(tmp_path, n=20), "block_size": 32, "n_embd": 32,
                 "batch_size": 8, "max_iters": 2, "warmup_iters": 1, "eval_interval": 2,
                 "eval_iters": 1, "log_interval": 1, "tensorboard": False}
    # Not run_module: it sets JAX_PLATFORMS, the choice this test leaves to the run.
    done = subprocess.run(
        [sys.executable, *train_cli("configs/cpu_tiny.py", tmp_path / "run", overrides)],
        cwd=REPO, env=_quiet_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in done.stderr.splitlines() if any(n in line for n in LIBTPU_NOISE)]
    assert not noise, noise
    # Without the choice libtpu speaks: the check above looks for the right lines.
    loud = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"], cwd="/", env=_quiet_env(),
        capture_output=True, text=True, timeout=120)
    assert any(n in loud.stderr for n in LIBTPU_NOISE), loud.stderr
