"""The shape plan and the programs compiled before step 0: exact when padded up, compiled
concurrently as planned, a failure stops the run before step 0, a resume compiles nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import train_helpers

from mypt_jax.data import batching
from mypt_jax.training import trainer
from mypt_jax.training.compilation import program_set as programs
from mypt_jax.training.compilation import shape_plan

S = batching.BatchShape


def test_plan_pads_rare_shapes_up_within_the_position_budget():
    counts = {S(8, 64, 8, False): 900, S(8, 64, 16, False): 5, S(8, 128, 16, False): 95,
              S(8, 128, 32, False): 1}

    def step_s(s):
        return s.rows * (s.length + 10 * s.projected) * 1e-6

    exact = shape_plan.plan(counts, step_s, compile_s=5.0, exact=True)
    assert set(exact.programs) == set(counts) and exact.extra == 0.0
    merged = shape_plan.plan(counts, step_s, compile_s=5.0)
    # Two programs: the rare shapes ride on covering ones, but the 900 short batches stay
    # at length 64 (padding them to 128 would double the computed positions).
    assert len(merged.programs) == 2 and merged.assigned[S(8, 64, 8, False)].length == 64
    assert merged.assigned[S(8, 128, 16, False)] == S(8, 128, 32, False)
    assert 0 < merged.extra <= shape_plan.MAX_EXTRA_POSITIONS
    for s, p in merged.assigned.items():
        assert p.covers(s) and batching.fit_program(s, merged.programs) == p
    # A compile that costs nothing keeps every exact shape.
    assert set(shape_plan.plan(counts, step_s, compile_s=0.0).programs) == set(counts)


def _losses(log):
    return {r["iter"]: r["train_loss"] for r in log if "train_loss" in r}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return train_helpers.make_dataset(tmp_path_factory.mktemp("data"))


def _config(dataset, workdir, **overrides):
    return train_helpers.tiny_config(
        dataset, workdir, max_iters=8, eval_interval=4, log_interval=1, eval_prompts_file="",
        length_buckets=(28, 30, 32), dropout=0.0, **overrides)  # shapes 8x30/k8, 8x28/k8


@pytest.mark.slow
def test_padded_up_shapes_train_exactly_as_the_exact_buckets(dataset, tmp_path, monkeypatch):
    """A run whose rare shapes are forced up to compiled ones logs the same losses."""
    cache = str(tmp_path / "xla")
    exact = trainer.train(_config(dataset, tmp_path / "exact", compile_plan="exact",
                                  compilation_cache_dir=cache))
    monkeypatch.setattr(shape_plan, "PRIOR_COMPILE_S", {"cpu": 1e6})  # compiles are dear
    monkeypatch.setattr(shape_plan, "MAX_EXTRA_POSITIONS", 1.0)
    merged = trainer.train(_config(dataset, tmp_path / "merged", compilation_cache_dir=""))
    plan = merged["shape_plan"]["train"]
    assert plan["padded_up"], plan  # something was forced up (else this compares nothing)
    assert len(plan["programs"]) < exact["shape_plan"]["train"]["exact_shapes"]
    trained = {r["shape"] for r in merged["compiles"] if r["program"] == "train"}
    assert trained == set(plan["programs"])
    a = _losses(train_helpers.read_log(tmp_path / "exact" / "log.jsonl"))
    b = _losses(train_helpers.read_log(tmp_path / "merged" / "log.jsonl"))
    assert len(a) == 8 and a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)],
                               rtol=2e-6, atol=2e-6)
    assert merged["final_val_loss"] == pytest.approx(exact["final_val_loss"], rel=2e-6)


@pytest.mark.slow
def test_planned_programs_compile_concurrently_and_a_resume_compiles_nothing(dataset, tmp_path):
    cache = str(tmp_path / "xla")
    first = trainer.train(_config(dataset, tmp_path / "run", compile_threads=2,
                                  compilation_cache_dir=cache, checkpoint_interval=4,
                                  compile_plan="exact"))
    plan = first["shape_plan"]
    planned = {("train", s) for s in plan["train"]["programs"]} | {
        ("eval", s) for s in plan["eval"]["programs"]}
    assert {(r["program"], r["shape"]) for r in first["compiles"]} == planned
    assert len(first["compiles"]) == len(planned) >= 3
    assert all(r["cache_hit"] is False and r["seconds"] > 0 for r in first["compiles"])
    # Back to step 4: the same plan (it covers the whole run), every program from the cache.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "8")
    again = trainer.train(_config(dataset, tmp_path / "run", compile_threads=2,
                                  compilation_cache_dir=cache, checkpoint_interval=4,
                                  compile_plan="exact"))
    assert again["resumed_from"] == 4
    assert {(r["program"], r["shape"]) for r in again["compiles"]} == planned
    assert all(r["cache_hit"] is True for r in again["compiles"]), again["compiles"]


def test_a_failed_compile_names_its_shape_and_stops_before_step_0(dataset, tmp_path, monkeypatch):
    compile_one = programs.Programs._compile

    def fail_one(self, job):
        if job.kind == "train" and job.shape.length == 30:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return compile_one(self, job)

    monkeypatch.setattr(programs.Programs, "_compile", fail_one)
    with pytest.raises(programs.CompileError, match=r"train 8x30/k8: RuntimeError: "
                                                    "RESOURCE_EXHAUSTED"):
        trainer.train(_config(dataset, tmp_path / "run", compile_threads=2,
                              compilation_cache_dir="", compile_plan="exact"))
    log = train_helpers.read_log(tmp_path / "run" / "log.jsonl")
    assert not [r for r in log if "train_loss" in r or "val_loss" in r]
    assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))
