"""The benchmark scripts run and say true things (their timings are never asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import train_helpers

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> dict:
    # One CPU device, as a user's shell has (the suite's process simulates 8).
    env = {**os.environ, "XLA_FLAGS": train_helpers.xla_flags(None)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_bench_train_tiny_jax_and_torch_start_from_the_same_loss():
    pytest.importorskip("torch")
    report = _run("bench_train.py", "--shape", "tiny", "--repeats", "1")
    first = report["first_step_loss"]
    assert set(first) == {"jax", "torch_eager"}
    # Same weights, batch and masked loss; at init the loss is near ln(vocab).
    assert abs(first["jax"] - first["torch_eager"]) < 1e-3
    assert abs(first["jax"] - math.log(50304)) < 0.5
    assert report["machine"]["malloc_tuned"] in (True, False)
    for impl in report["impls"].values():
        assert impl["step_s_best"] > 0 and 0 < impl["mfu"] < 1.5


@pytest.mark.slow
def test_profile_step_names_the_ops_it_times():
    report = _run("profile_step.py", "--shape", "tiny", "--top", "5")
    # What the script guarantees, whatever the load: the top ops are instructions of the
    # dumped HLO (each with its shape), trace events the HLO does not name are listed apart,
    # and the vocabulary head is among the ops. Which ops lead and their times are not checked.
    assert len(report["top_ops"]) == 5
    assert all(op["shape"] and op["shape"] != "?" and op["ms"] >= 0 for op in report["top_ops"])
    assert not {op["op"] for op in report["top_ops"]} & set(report["not_in_hlo"])
    assert report["ms_per_kind"]["vocabulary head"] > 0
    assert set(report["head_matmuls"]) == {"logits h @ W.T", "d_hidden g @ W", "d_kernel h.T @ g"}


@pytest.mark.slow
def test_bench_phase_layouts_train_the_same_losses(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    import train_helpers

    dataset = train_helpers.make_dataset(tmp_path)
    report = _run("bench_phase.py", "--dataset", str(dataset), "--config", "configs/cpu_tiny.py",
                  "--shape", "tiny", "--steps", "2", "--repeats", "1", "--no_torch")
    layouts = report["layouts"]
    assert set(layouts) == {"padded", "trimmed", "trimmed+head", "trimmed+flat", "packed+head"}
    assert report["machine"]["malloc_tuned"] is False  # beside the padded layout, glibc as it is
    assert layouts["padded"]["buckets"] == ["8x64/kall"]
    assert all(b.endswith("/flat") for b in layouts["trimmed+flat"]["buckets"])
    peak = report["matmul_peak_flops_per_s"]
    for name, entry in layouts.items():
        assert entry["max_loss_diff"] < 1e-5, name  # the same function in every layout
        assert entry["computed_positions_per_step"] <= 8 * 64
        assert entry["projected_phase_s"] == pytest.approx(entry["step_s"] * 40, rel=1e-3)
        # MFU: the FLOPs of the shapes run over the peak of the same rounds; the useful work
        # (real tokens, trained positions) is at most what the shapes run compute.
        assert entry["mfu"] == pytest.approx(  # the report rounds to 4 digits
            entry["model_flops_per_step"] / entry["step_s"] / peak, rel=2e-3)
        assert 0 < entry["useful_mfu"] <= entry["mfu"]
    assert layouts["packed+head"]["computed_positions_per_step"] < 8 * 64
    flops = {name: entry["model_flops_per_step"] for name, entry in layouts.items()}
    assert flops["trimmed+flat"] <= flops["trimmed+head"] <= flops["trimmed"] <= flops["padded"]


@pytest.mark.slow
def test_aot_attention_compiles_splash_for_a_tpu_topology():
    report = _run("aot_attention.py", "--shape", "tiny", "--runs", "v5e:2x2/2,1,2/splash")
    (run,) = report["runs"]
    assert "error" not in run, run
    assert (run["chips"], run["resolved"], run["pallas_kernel_in_hlo"]) == (4, "splash", True)
    assert run["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert run["memory_per_device"]["arguments"] > 0
    # the stated floor: model FLOPs over the chips' published bf16 peak (v5e 197 TFLOP/s)
    assert run["predicted_step_s_at_100pct_mfu"] == pytest.approx(
        run["model_flops_per_step"] / (4 * 197e12), rel=1e-3)


@pytest.mark.slow
def test_preflight_table_rows_follow_the_reports(tmp_path):
    report = _run("preflight_table.py", "--config", "configs/cpu_tiny.py", "--out", str(tmp_path),
                  "--runs", "v5e-4", "v5e-4:remat=full,mesh_data=1,mesh_fsdp=-1")
    plain, changed = report["rows"]
    assert plain["mesh"] == "4x1x1" and plain["remat"] == "none"
    assert changed["mesh"] == "1x4x1" and changed["remat"] == "full"
    assert plain["fits"] and changed["fits"] and 0 < plain["mfu"] < 1
    assert changed["step_ms"] > 0 and plain["need_gib"] > 0
    saved = json.loads((tmp_path / "v5e-4_remat-full_mesh_data-1_mesh_fsdp--1.json").read_text())
    assert saved["table"]["max_rss_bytes"] > 0 and saved["model"]["remat"] == "full"
    assert report["markdown"].count("\n| v5e-4") == 2


def test_interleaved_rounds_give_every_runner_the_same_load():
    """benchmarks/common.interleaved, which every speed ratio we quote comes from: warm-up calls
    first, then rounds in which each runner runs once in turn; best <= median per runner."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("jax", "torch")}
    report = common.interleaved(runners, repeats=3, warmup=2)
    assert calls == ["jax", "jax", "torch", "torch"] + ["jax", "torch"] * 3
    for times in report.values():
        assert set(times) == {"first_s", "best_s", "median_s"}
        assert 0 <= times["best_s"] <= times["median_s"]
