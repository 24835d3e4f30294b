"""The curriculum as one job: each phase starts from the previous one's weights as they are
on the devices, and that is bit-identical to starting it from what the previous phase wrote.

One tiny CPU curriculum runs twice over the same prepared data and compilation cache:
`--handoff memory` (the default) and `--handoff disk` (each phase waits for the previous
one's final writes and reads its weights back, as a process per phase does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mypt_jax.curriculum import model_steps, pipeline
from mypt_jax.interop import model_io
from mypt_jax.training.checkpoint import manager as ckpt_lib

TINY = {"max_iters": 3, "eval_interval": 3, "eval_iters": 1, "n_embd": 32, "batch_size": 8,
        "log_interval": 1, "warmup_iters": 1}


def _counting(monkeypatch, module, name: str) -> list:
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _curriculum(root: Path, data: Path, cache: Path, handoff: str, monkeypatch) -> dict:
    shutil.copytree(data, root / "data")
    restores = _counting(monkeypatch, ckpt_lib, "restore_params")
    loads = _counting(monkeypatch, model_io, "load_model")
    summaries = pipeline.run("all", root=root, preset="cpu", steps=("train", "test"),
                             overrides={**TINY, "compilation_cache_dir": str(cache)},
                             handoff=handoff)
    monkeypatch.undo()
    return {"summaries": summaries, "restores": list(restores), "loads": list(loads)}


def _final_params(workdir: str) -> dict[str, np.ndarray]:
    import jax

    params = model_io.load_params(Path(workdir) / model_io.RUN_MODEL_DIR)
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def both(tmp_path_factory):  # four tiny phases, twice: 40 s
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("handoff")
    pipeline.run("all", root=base / "prep", preset="cpu", steps=("generate", "mix", "prepare"))
    runs = {}
    for handoff in ("disk", "memory"):  # the cache is warm for the second: the same programs
        runs[handoff] = _curriculum(base / handoff, base / "prep" / "data", base / "xla",
                                    handoff, mp)
    mp.undo()
    return runs


@pytest.mark.slow
def test_the_in_memory_handoff_is_bit_identical_to_the_one_through_the_disk(both):
    disk, memory = both["disk"]["summaries"], both["memory"]["summaries"]
    assert [s["phase"] for s in memory] == list(pipeline.PHASES)
    for d, m in zip(disk, memory, strict=True):
        assert m["train"]["steps"] == TINY["max_iters"]
        dp, mp_ = _final_params(d["train"]["workdir"]), _final_params(m["train"]["workdir"])
        assert dp.keys() == mp_.keys()
        for k in dp:
            assert dp[k].dtype == mp_[k].dtype and np.array_equal(dp[k], mp_[k]), (m["phase"], k)
        assert m["train"]["first_val_loss"] == d["train"]["first_val_loss"]
        assert m["train"]["final_val_loss"] == d["train"]["final_val_loss"]
        assert m["train"]["train_loss"] == d["train"]["train_loss"]
        assert m["train"]["eval_sets"] == d["train"]["eval_sets"]
        # Step 4 from the weights in memory answers as Step 4 from model/.
        assert m["test"] == d["test"]


@pytest.mark.slow
def test_memory_reads_no_weights_back_and_disk_reads_each_phase(both):
    disk, memory = both["disk"], both["memory"]
    phases = len(pipeline.PHASES)
    # Disk: each later phase restores the previous final checkpoint, each test loads model/.
    assert len(disk["restores"]) == phases - 1 and len(disk["loads"]) == phases
    # Memory: nothing is read back, but the last phase's test prompts are answered from
    # the weights it leaves on the devices only when it hands off; it does not (the end).
    assert memory["restores"] == [] and len(memory["loads"]) == 1


@pytest.mark.slow
def test_every_phase_is_finished_on_disk_with_its_exports_and_results(both):
    from mypt_jax.training.checkpoint.run_meta import finished_run

    for s in both["memory"]["summaries"]:
        t = s["train"]
        run = finished_run(t["workdir"], TINY["max_iters"])
        assert run is not None and run.summary["final_val_loss"] == t["final_val_loss"]
        model_dir = Path(t["model_dir"])
        assert (model_dir / "config.json").is_file()
        results = json.loads(model_steps.test_results_path(t["workdir"]).read_text())
        assert [(r["name"], r["completion"]) for r in results["results"]] == [
            (r["name"], r["completion"]) for r in s["test"]["results"]]
        # written after the model dir, so a rerun finds the test step complete
        assert (model_steps.test_results_path(t["workdir"]).stat().st_mtime
                >= (model_dir / "config.json").stat().st_mtime)
        log = [json.loads(x) for x in Path(t["log"]).read_text().splitlines()]
        saves = [r for r in log if r.get("event") == "save"]
        assert saves and saves[-1]["iter"] == TINY["max_iters"]


# ----------------------------------------------------------------------------- the parts


def test_final_writes_run_behind_and_raise_where_they_are_waited_for():
    import contextlib
    import threading

    from mypt_jax.training import handoff

    go, order = threading.Event(), []

    def write():
        assert go.wait(30)
        order.append("written")

    cleanup = contextlib.ExitStack()
    cleanup.callback(lambda: order.append("closed"))
    writes = handoff.FinalWrites(write, cleanup)
    assert not writes.done() and order == []  # the caller goes on while it writes
    go.set()
    writes.wait()
    assert writes.done() and order == ["written", "closed"]

    def fail():
        raise OSError("No space left on device")

    closed = contextlib.ExitStack()
    closed.callback(lambda: order.append("closed again"))
    failing = handoff.FinalWrites(fail, closed)
    with pytest.raises(OSError, match="No space left"):
        failing.wait()
    assert order[-1] == "closed again"  # the checkpointer and the log are closed anyway


def test_the_next_phase_gets_its_own_copy_of_the_weights():
    import jax
    import jax.numpy as jnp

    from mypt_jax.training import handoff

    final = {"w": jnp.arange(8.0), "b": {"x": jnp.ones((2, 3), jnp.bfloat16)}}
    mine = handoff.weights_for_next(final)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(mine), strict=True):
        assert a.dtype == b.dtype and a.sharding == b.sharding
        assert np.array_equal(np.asarray(a), np.asarray(b))
        b.delete()  # the next phase's first update donates its copy...
        assert np.asarray(a).size  # ...while the final save still reads the original
