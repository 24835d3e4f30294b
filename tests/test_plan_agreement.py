"""Every process plans the same programs: process 0's cost model is broadcast before the shape
plan, and the plans' digest is compared before anything compiles (compile_plan.plan_run).

Each host reads the compile timings of its own cache folder; left alone, two hosts with other
timings would plan other shape buckets, compile other programs and wait in a collective forever.
"""

from __future__ import annotations

import numpy as np
import pytest
import train_helpers

from mypt_jax.data.batching import BatchShape
from mypt_jax.training.compilation import compile_cache, compile_plan, shape_plan
from mypt_jax.training.setup import agreement

# The CPU prior (no timings file) pads the rare shape up; a host whose file says compiles are
# free keeps every exact shape.
PRIOR = shape_plan.Cost.prior("cpu")
FREE_COMPILES = shape_plan.Cost(1e-6, PRIOR.flops_per_s)


def _plan(cost: shape_plan.Cost) -> shape_plan.ShapePlan:
    common, rare = BatchShape(8, 32, 0, False), BatchShape(8, 29, 0, False)
    flops_per_position = 1e6
    return shape_plan.plan({common: 30, rare: 1},
                           lambda s: s.rows * s.length * flops_per_position / cost.flops_per_s,
                           cost.compile_s)


def test_other_timings_plan_other_programs():
    """The premise: the two cost models of the two-process test below give two plans."""
    assert len(_plan(PRIOR).programs) == 1
    assert len(_plan(FREE_COMPILES).programs) == 2


def test_process_0s_cost_model_reaches_every_process(monkeypatch):
    from jax.experimental import multihost_utils

    assert compile_plan.process0_cost(FREE_COMPILES) == FREE_COMPILES  # one process: its own
    sent = []

    def broadcast(bits):  # as process 1: what it receives is process 0's, bit for bit
        sent.append(bits)
        return np.array([PRIOR.compile_s, PRIOR.flops_per_s], np.float64).view(np.int32)

    monkeypatch.setattr("jax.process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    assert compile_plan.process0_cost(FREE_COMPILES) == PRIOR
    assert sent[0].dtype == np.int32  # no float64 on the device, where x64 is off


def test_a_plan_that_differs_stops_every_process(monkeypatch):
    from jax.experimental import multihost_utils

    digest = "f" * 64  # 60 bits compared: more than int32 carries
    agreement.check_values({"the shape plan": digest}, hint="h")  # one process: nothing to do
    rows = {}

    def allgather(words):  # process 1's digest differs from process 0's in its top bit only
        other = np.array([int("7" + "f" * 14, 16)], np.int64).view(np.int32)
        return np.stack([words, rows.get("other", other)])

    monkeypatch.setattr("jax.process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    with pytest.raises(agreement.HostsDisagree,
                       match="processes disagree on the shape plan: process 0 has "
                             "fffffffffffffff, process 1: 7ffffffffffffff; every host"):
        agreement.check_values({"the shape plan": digest}, hint="every host")
    rows["other"] = np.array([int("f" * 15, 16)], np.int64).view(np.int32)
    agreement.check_values({"the shape plan": digest}, hint="every host")  # the same: no error


@pytest.mark.slow
def test_two_processes_with_other_timings_plan_alike(tmp_path, monkeypatch):
    """Process 1's cache folder alone says compiles are free (it would keep every exact
    shape); process 0's has no timings (the prior pads the rare one up). Both plan with
    process 0's costs, compile the same programs and train; before, they planned apart and
    the first batch of the rare shape hung or failed in a collective."""
    import multihost_worker
    from test_multihost import _free_port, _start, _wait

    from mypt_jax.training.setup import config as cfg_lib

    dataset = train_helpers.make_dataset(tmp_path)
    workdir, homes = tmp_path / "run", [tmp_path / "home0", tmp_path / "home1"]
    config = train_helpers.tiny_config(dataset, workdir, max_iters=4,
                                       **{**multihost_worker.OVERRIDES, "compile_plan": "auto"})
    r = cfg_lib.resolve(config)  # this process's 8 devices: the two processes' mesh
    with monkeypatch.context() as env:  # where process 1's "auto" cache folder is
        env.setenv("XDG_CACHE_HOME", str(homes[1]))
        cache_1 = compile_cache.resolve_dir("auto")
    timings = compile_plan.timings_for(r, cfg_lib.mesh_for(r), cache_1)
    timings.update(compile_s=FREE_COMPILES.compile_s)
    assert compile_plan.cost_for(timings, 8).compile_s == FREE_COMPILES.compile_s
    port = _free_port()
    reports = _wait([
        _start(["--dataset", str(dataset), "--workdir", str(workdir), "--steps", "4",
                "--compile_plan", "auto", "--cache_home", str(homes[i]),
                "--port", str(port), "--process_id", str(i), "--num_processes", "2"], 4,
               tmp_path / f"proc{i}.out")
        for i in range(2)])
    plans = [r["shape_plan"] for r in reports]
    assert plans[0] == plans[1]
    assert plans[0]["cost_model"] == {"compile_s": PRIOR.compile_s,
                                      "flops_per_s": PRIOR.flops_per_s}
    assert plans[0]["train"]["padded_up"], plans[0]  # process 1's own costs would not pad
    assert reports[0]["final_val_loss"] == reports[1]["final_val_loss"]
