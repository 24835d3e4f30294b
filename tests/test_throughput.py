"""A run's step time and MFU: log windows leave evals and saves out; the peak they divide by."""

from __future__ import annotations

import time

import pytest

from mypt_jax.data.batching import BatchInfo, BatchShape
from mypt_jax.preflight import peak
from mypt_jax.training.observe.step_stats import StepWindow

INFO = BatchInfo(BatchShape(4, 64, 8, False), real_tokens=200, trained_tokens=20,
                 padded_positions=4 * 512)


def test_window_leaves_excluded_pauses_out_of_the_step_time(monkeypatch):
    clock = iter([100.0, 110.0, 120.0])  # start, first close, second close
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    w = StepWindow()
    w.add(INFO)
    w.add(INFO)
    w.exclude(6.0)  # an eval inside the window
    first = w.close()
    assert first["step_time"] == pytest.approx((10.0 - 6.0) / 2)
    assert first["real_tokens_per_s"] == pytest.approx(400 / 4.0)
    w.add(INFO)
    assert w.close()["step_time"] == pytest.approx(10.0)  # the pause went with its window


def test_measured_peak_counts_the_chain_of_matmuls(monkeypatch):
    calls = []
    runner = (lambda: calls.append(1)), 2.0 * 64**3 * 4
    monkeypatch.setattr(peak, "matmul_runner", lambda n, reps, dtype: runner)
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.4])  # three calls: 0.5 s, 0.25 s, 0.4 s
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    assert peak.measured_matmul_peak(n=64, reps=4, repeats=3) == pytest.approx(2.0 * 64**3 * 4 / 0.25)
    assert len(calls) == 3


def test_device_peak_on_cpu_is_measured_in_the_run_dtype():
    peak.device_peak.cache_clear()
    flops, source = peak.device_peak("float32")
    assert source.startswith("measured float32 matmul on ")
    assert 1e8 < flops < 1e14  # a real rate, not a default
    assert peak.device_peak("float32") == (flops, source)  # measured once per process
