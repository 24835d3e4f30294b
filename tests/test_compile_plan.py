"""The shape plan and the programs compiled before step 0: exact when padded up, compiled
concurrently as planned, a failure stops the run before step 0, a resume compiles nothing."""

from __future__ import annotations

import shutil
import threading
import types

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


# ----------------------------------------------------------------------------- behind the steps


def _job(kind, shape, gate=None, fail=False):
    def lower():
        if gate is not None:
            assert gate.wait(30), "the test never released this compile"
        if fail:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return types.SimpleNamespace(compile=lambda: (lambda *a: (kind, shape, a)))

    return programs.Job(kind, shape, lower)


def test_later_programs_compile_behind_and_a_batch_waits_for_its_own_only():
    gate_late, gate_never = threading.Event(), threading.Event()
    progs = programs.Programs(print_fn=lambda m: None)
    progs.compile_ahead([_job("eval", "e"), _job("train", "a"), _job("train", "b", gate_late),
                         _job("train", "c", gate_never)], threads=4, first=2)
    # Returned with the first two compiled, the other two still going.
    assert set(progs.compiled) == {("eval", "e"), ("train", "a")} and progs.ahead_wall_s > 0
    assert progs.call("train", "a", 1) == ("train", "a", (1,))
    gate_late.set()  # "b" can finish; calling it waits for it alone, never for "c"
    assert progs.call("train", "b", 2) == ("train", "b", (2,))
    assert ("train", "c") not in progs.compiled and progs.waited_s >= 0
    assert [r["shape"] for r in progs.behind] == ["b"]
    gate_never.set()
    progs.join()
    assert [r["shape"] for r in progs.behind] == ["b", "c"] and not progs.late


def test_a_compile_that_fails_behind_the_steps_stops_before_its_first_batch():
    progs = programs.Programs(print_fn=lambda m: None)
    progs.compile_ahead([_job("train", "a"), _job("train", "b", fail=True)], threads=2, first=1)
    assert progs.call("train", "a") == ("train", "a", ())
    with pytest.raises(programs.CompileError, match="train b: RuntimeError: RESOURCE_EXHAUSTED"):
        progs.call("train", "b")
    # The memory check runs as each compile ends: a program that does not fit stops there.
    def check(kind, shape, compiled):
        if shape == "big":
            raise ValueError(f"{kind} {shape} needs more than the device holds")

    progs = programs.Programs(print_fn=lambda m: None, check=check)
    progs.compile_ahead([_job("train", "a"), _job("train", "big")], threads=2, first=1)
    with pytest.raises(ValueError, match="train big needs more"):
        progs.call("train", "big")
    progs.close()


@pytest.mark.slow
def test_a_run_with_compiles_behind_the_steps_trains_as_one_without(dataset, tmp_path):
    """Background compiles change when programs are ready, never what they compute."""
    off = trainer.train(_config(dataset, tmp_path / "off", compilation_cache_dir="",
                                compile_plan="exact", compile_background="off"))
    on = trainer.train(_config(dataset, tmp_path / "on", compilation_cache_dir="",
                               compile_plan="exact", compile_background="on", compile_threads=1))
    a = _losses(train_helpers.read_log(tmp_path / "off" / "log.jsonl"))
    b = _losses(train_helpers.read_log(tmp_path / "on" / "log.jsonl"))
    assert len(a) == 8 and a == b and on["final_val_loss"] == off["final_val_loss"]
    assert {(r["program"], r["shape"]) for r in on["compiles"]} == {
        (r["program"], r["shape"]) for r in off["compiles"]}
    # Two train programs: the second one compiled behind the steps, logged as such.
    log = train_helpers.read_log(tmp_path / "on" / "log.jsonl")
    behind = [r for r in log if r.get("event") == "compile" and r.get("behind")]
    assert len(on["shape_plan"]["train"]["programs"]) >= 2 and behind
    assert all(r["program"] == "train" for r in behind)


@pytest.mark.slow
def test_the_next_phase_compiles_ahead_into_the_cache_it_starts_from(dataset, tmp_path):
    """What `pipeline --phase all` compiles for phase k+1 while phase k trains is what k+1's
    own start-up plans: every one of its train and eval programs is then a cache hit."""
    from mypt_jax.training import next_phase
    from mypt_jax.training.compilation import compile_cache

    config = _config(dataset, tmp_path / "next", compilation_cache_dir=str(tmp_path / "xla"),
                     compile_plan="exact", compile_background="on")
    compile_cache.use(str(tmp_path / "other"))  # a phase running with another cache: not there
    assert not next_phase.wanted(config)
    compile_cache.use(config.compilation_cache_dir)  # the running phase's, as in the pipeline
    assert next_phase.wanted(config)
    assert not next_phase.wanted(_config(dataset, tmp_path / "x", compile_background="auto"))
    ahead = next_phase.NextPhase(config)
    compiled = {(r["program"], r["shape"]) for r in ahead.wait()}
    assert ahead.error is None and {p for p, _ in compiled} == {"train", "eval"}
    summary = trainer.train(config)
    ran = {(r["program"], r["shape"]): r["cache_hit"] for r in summary["compiles"]}
    assert compiled == set(ran)
    assert all(ran.values()), ran
