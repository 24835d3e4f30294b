"""Two processes x 4 CPU devices joined through a local coordinator == one process x 8 devices.

Each run trains 2 steps, checkpoints, then a second train() call restores that checkpoint
and trains to step 4 (tests/multihost_worker.py). Losses, the checkpoint and the final
weights must match the single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import train_helpers
from flax import nnx

WORKER = Path(__file__).with_name("multihost_worker.py")
PROMPTS = train_helpers.REPO / "configs/sft_eval/phase3a1_alpha_test_prompts.json"
TIMEOUT_S = 420  # a hang (e.g. a process that never joins) fails the test instead of blocking CI
_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], devices: int, out: Path) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env.update(XLA_FLAGS=train_helpers.xla_flags(devices), JAX_PLATFORMS="cpu")
    f = out.open("w")
    proc = subprocess.Popen([sys.executable, str(WORKER), *args], cwd=train_helpers.REPO, env=env,
                            stdout=f, stderr=subprocess.STDOUT, text=True)
    f.close()
    return proc, out


def _wait(runs: list[tuple[subprocess.Popen, Path]]) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc, _ in runs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, _ in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    reports = []
    for proc, out in runs:
        text = out.read_text()
        assert proc.returncode == 0, f"{out.name}: rc {proc.returncode}\n{text[-4000:]}"
        lines = [line for line in text.splitlines() if line.startswith("REPORT ")]
        assert len(lines) == 1, text[-4000:]
        reports.append(json.loads(lines[0].removeprefix("REPORT ")))
    return reports


def _losses(workdir: Path, key: str) -> dict[int, float]:
    return {r["iter"]: r[key] for r in train_helpers.read_log(workdir / "log.jsonl") if key in r}


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = _free_port()
    common = ["--dataset", str(dataset), "--eval_prompts_file", str(PROMPTS)]
    runs = [
        _start([*common, "--workdir", str(multi), "--port", str(port), "--process_id", str(i),
                "--num_processes", "2", *(["--stop_clock"] if i else [])], 4,
               tmp_path / f"proc{i}.out")
        for i in range(2)
    ]
    reports = _wait(runs)
    assert [(r["process_index"], r["process_count"], r["devices"], r["local_devices"])
            for r in reports] == [(0, 2, 8, 4), (1, 2, 8, 4)]
    assert [r["resumed_from"] for r in reports] == [2, 2]
    # Time saves: process 0's clock decides (process 1's never moves) and both save the same
    # steps; a process that saved alone would wait for the other forever.
    assert reports[0]["saves"] == reports[1]["saves"]
    first, second = reports[0]["saves"]  # the run state's saves: the resumed run's go on
    assert second[:len(first)] == first and first[-1] == {"step": 2, "trigger": "final"}
    assert second[-1] == {"step": 4, "trigger": "final"}
    assert "time" in [s["trigger"] for s in second], second
    (one,) = _wait([_start([*common, "--workdir", str(single)], 8, tmp_path / "single.out")])
    assert (one["process_count"], one["devices"]) == (1, 8)

    # Only process 0 logs: one start event per train() call, the second one a resume.
    log = train_helpers.read_log(multi / "log.jsonl")
    starts = [r for r in log if r.get("event") == "start"]
    assert [(s["resumed"], s["processes"], s["devices"]) for s in starts] == [
        (False, 2, 8), (True, 2, 8)]

    train_m, train_s = _losses(multi, "train_loss"), _losses(single, "train_loss")
    assert sorted(train_m) == sorted(train_s) == [0, 1, 2, 3]
    np.testing.assert_allclose([train_m[k] for k in range(4)], [train_s[k] for k in range(4)],
                               rtol=2e-5)
    val_m, val_s = _losses(multi, "val_loss"), _losses(single, "val_loss")
    assert sorted(val_m) == sorted(val_s) and 4 in val_m
    np.testing.assert_allclose([val_m[k] for k in sorted(val_m)], [val_s[k] for k in sorted(val_s)],
                               rtol=2e-5)
    assert reports[0]["final_val_loss"] == reports[1]["final_val_loss"]
    # Both processes shaped every batch alike (trimmed, trained positions only), as one did.
    assert reports[0]["batch_shapes"] == reports[1]["batch_shapes"] == one["batch_shapes"]
    shapes = {s for run in one["batch_shapes"] for s in run}
    assert all("/k8" in s for s in shapes) and len({s.split("/")[0] for s in shapes}) > 1, shapes
    # Eval-prompt generation on weights sharded over both processes: the same greedy text.
    gen_m, gen_s = _losses(multi, "gen"), _losses(single, "gen")
    assert sorted(gen_m) == sorted(val_m) and gen_m == gen_s

    # Every process wrote its own shards of the step-4 checkpoint.
    state_dir = multi / "checkpoints" / "4" / "state"
    assert {p.name for p in state_dir.glob("ocdbt.process_*")} == {"ocdbt.process_0",
                                                                    "ocdbt.process_1"}
    p_multi, p_single = train_helpers.final_params(multi), train_helpers.final_params(single)
    assert jax.tree.structure(p_multi) == jax.tree.structure(p_single)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 p_multi, p_single)

    # Process 0 wrote the model dir from weights gathered over both processes.
    assert [r["model_dir"] for r in reports] == [str(multi / "model")] * 2
    import mypt_jax

    m_multi, m_single = mypt_jax.load(multi / "model"), mypt_jax.load(single / "model")
    w_multi = nnx.to_pure_dict(nnx.state(m_multi.module, nnx.Param))
    w_single = nnx.to_pure_dict(nnx.state(m_single.module, nnx.Param))
    assert jax.tree.structure(w_multi) == jax.tree.structure(w_single)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 w_multi, w_single)
    # ... and they are the step-4 checkpoint's weights, not a partial gather.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 w_multi, p_multi)


# ----------------------------------------------------------------------------- maybe_initialize


def test_environment_decides_whether_to_join():
    from mypt_jax.parallel.distributed import DistributedError, requested

    assert requested({}) is None
    assert requested({"SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert requested({"SLURM_NTASKS": "4"}) == {} == requested({"OMPI_COMM_WORLD_SIZE": "2"})
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1"}
    assert requested(env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                              "process_id": 1}
    with pytest.raises(DistributedError, match="JAX_PROCESS_ID is not"):
        requested({**env, "JAX_PROCESS_ID": ""})
    with pytest.raises(DistributedError, match=r"JAX_PROCESS_ID: 2 is not in \[0, "):
        requested({**env, "JAX_PROCESS_ID": "2"})
    with pytest.raises(DistributedError, match="JAX_NUM_PROCESSES: expected an integer"):
        requested({**env, "JAX_NUM_PROCESSES": "two"})


def test_single_process_does_not_join_and_late_join_is_refused(monkeypatch):
    from mypt_jax.parallel import distributed

    for var in (*_DIST_ENV, "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.maybe_initialize() is False
    jax.devices()  # the backend is up now: joining can no longer work
    with pytest.raises(distributed.DistributedError, match="before any other JAX call"):
        distributed.maybe_initialize(coordinator_address="127.0.0.1:1", num_processes=2,
                                     process_id=0)


@pytest.mark.slow
def test_a_process_left_alone_prints_the_hang_hint(tmp_path):
    """jax#22436: one of two processes started; it must say why before jax aborts it."""
    code = ("from mypt_jax.parallel import distributed\n"
            f"distributed.maybe_initialize(coordinator_address='127.0.0.1:{_free_port()}', "
            "num_processes=2, process_id=0, timeout_s=4)\nprint('JOINED')\n")
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=train_helpers.REPO, capture_output=True,
                         text=True, timeout=120, env={**env, "JAX_PLATFORMS": "cpu"})
    assert out.returncode != 0 and "JOINED" not in out.stdout
    assert "still waiting for the other processes" in out.stderr and "jax#22436" in out.stderr
