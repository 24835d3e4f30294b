"""One cpu_tiny run with a profiler window and time-triggered saves, read by every test here:
the trace files, the `event: profile` line, the saves and their triggers, the goodput table,
every log line against the documented schema (training/observe/log_schema.py), and the
reference of a run resumed from a temporary checkpoint (training/checkpoint/policy.py)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import train_helpers

from mypt_jax.training import saver as saver_lib
from mypt_jax.training import trainer
from mypt_jax.training.observe import goodput, log_schema

STEPS = 20
# dropout > 0: a resume must also continue the dropout stream (fold_in(seed, step))
COMMON = dict(max_iters=STEPS, eval_interval=10, log_interval=5, checkpoint_interval=0,
              keep_best=0, tensorboard=False, dropout=0.1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return train_helpers.make_dataset(tmp_path_factory.mktemp("observe"))


@pytest.fixture(scope="module")
def run(dataset):
    workdir = dataset.parent / "run"
    # 0.006 minutes: a few time saves within the 20 steps on any machine this runs on.
    c = train_helpers.tiny_config(dataset, workdir, checkpoint_minutes=0.006,
                                  profiler_start_step=3, profiler_num_steps=2, **COMMON)
    summary = trainer.train(c)
    return workdir, summary, train_helpers.read_log(workdir / "log.jsonl")


def test_the_profile_window_leaves_an_xplane_trace_and_logs_its_steps(run):
    workdir, _, log = run
    (profile,) = [r for r in log if r.get("event") == "profile"]
    assert profile["steps"] == [3, 4]
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    assert [str(t) for t in traces] == [profile["xplane"]] and traces[0].stat().st_size > 0
    assert profile["perfetto_trace"].endswith("perfetto_trace.json.gz")


def test_time_saves_come_before_the_final_one_and_each_names_its_trigger(run):
    workdir, summary, log = run
    saves = [r for r in log if r.get("event") == "save"]
    assert saves and all(r["trigger"] in log_schema.TRIGGERS for r in saves)
    assert saves[-1]["trigger"] == "final" and saves[-1]["step"] == STEPS
    times = [r["step"] for r in saves if r["trigger"] == "time"]
    assert times and max(times) < STEPS and times == sorted(times)
    assert summary["saves"] == [{"step": r["step"], "trigger": r["trigger"]} for r in saves]
    # Temporary saves are gone once a newer one committed: only the final one is left.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(STEPS)]
    meta = json.loads((workdir / "checkpoints" / str(STEPS) / "meta" / "metadata").read_text())
    assert meta["trigger"] == "final" and meta["finished"]


def test_every_log_line_matches_the_schema(run):
    _, _, log = run
    problems = {i: p for i, record in enumerate(log) if (p := log_schema.check(record))}
    assert not problems, problems
    kinds = {log_schema.kind_of(r) for r in log}
    assert {"step", "eval", "start", "compile", "save", "profile", "goodput", "finished"} <= kinds


def test_the_schema_check_can_fail():
    assert log_schema.check({"iter": 1, "time": 0.0, "event": "save", "step": 1, "trigger": "whim",
                             "triggers": [], "blocking_s": 0.1, "total_s": 0.1,
                             "overlapped_s": 0}) == [
        "save: trigger 'whim' is not one of ('time', 'interval', 'eval', 'best', 'preempt', "
        "'final')"]
    assert log_schema.check({"iter": 1, "event": "finished", "final_val_loss": "low",
                             "extra": 1}) == [
        "finished: missing time", "finished: missing wall_time_s", "finished: final_val_loss is 'low', expected float",
        "finished: unknown field extra"]
    assert log_schema.check({"iter": 1}) == ["no known kind (event None, keys ['iter'])"]


def test_the_docs_page_shows_the_schema():
    page = (train_helpers.REPO / "docs" / "log-schema.md").read_text(encoding="utf-8")
    assert log_schema.markdown() in page


def test_the_goodput_table_accounts_for_the_wall_clock(run):
    _, summary, log = run
    table = summary["goodput"]
    assert list(table["seconds"]) == list(goodput.ROWS)
    assert sum(table["seconds"].values()) == pytest.approx(table["wall_s"], rel=1e-6)
    assert sum(table["share"].values()) == pytest.approx(1.0)
    assert table["seconds"]["steps"] > 0 and table["seconds"]["compile"] > 0
    assert table["seconds"]["eval"] > 0 and table["seconds"]["save_blocking"] > 0
    assert table["seconds"]["profile"] > 0 and table["seconds"]["startup"] > 0
    assert table["seconds"]["export"] > 0
    (logged,) = [r for r in log if r.get("event") == "goodput"]
    assert logged["seconds"] == table["seconds"]


@pytest.mark.slow
def test_a_resume_from_a_temporary_checkpoint_is_exact(run, dataset, monkeypatch):
    """A run dies as it starts its final save, so what is left is its newest time save; the
    rerun resumes from it and ends with the uninterrupted run's weights and losses."""
    ref = run[0]
    crashed = dataset.parent / "crashed"
    save = saver_lib.Saver.save

    def crash_at_the_end(self, step, state, triggers, **kw):
        if "final" in triggers:
            raise RuntimeError("host lost")
        return save(self, step, state, triggers, **kw)

    monkeypatch.setattr(saver_lib.Saver, "save", crash_at_the_end)
    config = train_helpers.tiny_config(dataset, crashed, checkpoint_minutes=0.003, **COMMON)
    with pytest.raises(RuntimeError, match="host lost"):
        trainer.train(config)
    monkeypatch.setattr(saver_lib.Saver, "save", save)
    saves = [r for r in train_helpers.read_log(crashed / "log.jsonl") if r.get("event") == "save"]
    assert saves and {r["trigger"] for r in saves} == {"time"}
    (left,) = [int(p.name) for p in (crashed / "checkpoints").iterdir()]
    assert left == saves[-1]["step"] < STEPS  # the older time saves are gone

    assert trainer.train(config)["resumed_from"] == left
    jax.tree.map(np.testing.assert_array_equal, train_helpers.final_params(ref),
                 train_helpers.final_params(crashed))
    losses = [{r["iter"]: r["train_loss"] for r in train_helpers.read_log(path / "log.jsonl")
               if "train_loss" in r and r["iter"] >= left} for path in (ref, crashed)]
    assert losses[0] == losses[1] and losses[0]


def test_profiler_port_starts_the_server_and_close_stops_it(tmp_path):
    import socket
    import types

    from mypt_jax.training.observe.profiler import Profiler

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    printed = []
    writer = types.SimpleNamespace(print=printed.append, write=lambda r: None)
    c = types.SimpleNamespace(profiler_start_step=0, profiler_num_steps=0, profiler_port=port,
                              profiler_all_hosts=False, workdir=str(tmp_path))
    profiler = Profiler(c, writer, start=0)
    assert profiler.server is not None and not profiler.enabled
    assert printed == [f"profiler server on port {port} (capture on demand)"]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # something listens there
    profiler.close()
    assert profiler.server is None
