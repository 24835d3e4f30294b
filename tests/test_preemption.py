"""SIGTERM / SIGINT: the step in flight finishes, a checkpoint is saved at it, exit 75; a rerun
continues bit-identically. With two processes a signal to one of them stops both at one step."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import train_helpers

from mypt_jax.training import exit_codes
from mypt_jax.training.checkpoint import preemption
from mypt_jax.training.checkpoint.preemption import PREEMPTED_EXIT_CODE

OVERRIDES = {
    "max_iters": 16, "eval_interval": 5, "checkpoint_interval": 5, "log_interval": 1,
    "eval_iters": 1, "dropout": 0.1, "n_embd": 32, "block_size": 32, "batch_size": 8,
    "tensorboard": False, "eval_prompts_file": "",
}

def _cli(dataset, workdir, **extra):
    return train_helpers.train_cli("configs/cpu_tiny.py", workdir,
                                   {**OVERRIDES, "dataset_dir": dataset, **extra})


def _steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigterm_then_sigint_save_at_the_step_in_flight_and_resume_bit_identically(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    out = train_helpers.run_module(_cli(dataset, ref))
    assert out.returncode == 0, out.stderr[-3000:]

    # SIGTERM as update 7 starts: update 7 finishes, the checkpoint holds 8 updates.
    out = train_helpers.run_module(train_helpers.signalled(_cli(dataset, run), 7, "SIGTERM"))
    assert out.returncode == PREEMPTED_EXIT_CODE, out.stderr[-3000:]
    assert f"preempted: SIGTERM: stopped at step 8, saved {run / 'checkpoints' / '8'}" in out.stderr
    assert _steps(run) == [5, 8]
    log = train_helpers.read_log(run / "log.jsonl")
    assert [(r["iter"], r["signal"]) for r in log if r.get("event") == "preempted"] == [
        (8, "SIGTERM")]
    assert max(r["iter"] for r in log if "train_loss" in r) == 7

    # Resumed at 8, Ctrl-C as the 4th update of this process starts (update 11): saved at 12.
    out = train_helpers.run_module(train_helpers.signalled(_cli(dataset, run), 3, "SIGINT"))
    assert out.returncode == PREEMPTED_EXIT_CODE, out.stderr[-3000:]
    assert "preempted: SIGINT: stopped at step 12" in out.stderr
    assert 12 in _steps(run)

    out = train_helpers.run_module(_cli(dataset, run))
    assert out.returncode == 0, out.stderr[-3000:]
    log = train_helpers.read_log(run / "log.jsonl")
    assert [(r["iter"], r["resumed"]) for r in log if r.get("event") == "start"] == [
        (0, False), (8, True), (12, True)]
    jax.tree.map(np.testing.assert_array_equal, train_helpers.final_params(ref),
                 train_helpers.final_params(run))
    ref_losses = {r["iter"]: r["train_loss"] for r in train_helpers.read_log(ref / "log.jsonl")
                  if "train_loss" in r}
    losses = {r["iter"]: r["train_loss"] for r in log if "train_loss" in r}
    assert losses == ref_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(argv_of, n: int, devices: int, timeout: float = 300) -> list:
    """Starts `n` processes joined through a local coordinator; returns (rc, output) each.

    A process still running at `timeout` is killed and reported as rc None: a hang fails the
    test instead of blocking CI.
    """
    port = _free_port()
    procs = []
    for i in range(n):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
                   XLA_FLAGS=train_helpers.xla_flags(devices))
        procs.append(subprocess.Popen([sys.executable, *argv_of(i)], cwd=train_helpers.REPO,
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    results = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
            results.append((p.returncode, text))
        except subprocess.TimeoutExpired:
            p.kill()
            results.append((None, p.communicate()[0]))
    return results


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    mesh = {"mesh_data": 2, "mesh_fsdp": 2}
    results = run_processes(lambda i: _cli(dataset, ref, **mesh), 2, 2)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]

    # Only process 1 is signalled; jax's preemption service tells process 0.
    results = run_processes(
        lambda i: train_helpers.signalled(_cli(dataset, run, **mesh), 6, "SIGTERM", process=1),
        2, 2)
    assert [rc for rc, _ in results] == [PREEMPTED_EXIT_CODE] * 2, results[1][1][-3000:]
    stopped = [[line for line in text.splitlines() if line.startswith("preempted: ")]
               for _, text in results]
    assert all(len(lines) == 1 for lines in stopped), stopped
    assert stopped[0][0] == stopped[1][0], stopped  # the same step and checkpoint on both
    step = int(stopped[0][0].split("stopped at step ")[1].split(",")[0])
    assert 7 <= step < OVERRIDES["max_iters"] and step in _steps(run)
    state_dir = run / "checkpoints" / str(step) / "state"
    assert {p.name for p in state_dir.glob("ocdbt.process_*")} == {
        "ocdbt.process_0", "ocdbt.process_1"}

    # Resumed, with process 1 signalled as the restore begins: jax's sync manager counts its
    # calls from 0, and the watcher hands it its own count (not the resumed step), so both
    # stop before the first step, saving nothing.
    results = run_processes(lambda i: train_helpers.signalled_during(
        _cli(dataset, run, **mesh), "restore", "SIGTERM", process=1), 2, 2, timeout=120)
    assert [rc for rc, _ in results] == [PREEMPTED_EXIT_CODE] * 2, results[1][1][-3000:]
    for _, text in results:
        assert f"preempted: SIGTERM: stopped at step {step}, nothing new to save" in text, text
    assert max(_steps(run)) == step

    results = run_processes(lambda i: _cli(dataset, run, **mesh), 2, 2)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:]
    jax.tree.map(np.testing.assert_array_equal, train_helpers.final_params(ref),
                 train_helpers.final_params(run))


def test_a_signal_stops_the_run_at_the_next_step_and_the_handlers_come_back():
    """The one-process watcher in-process: SIGTERM and SIGINT become a stop request, a second
    Ctrl-C is Python's own, and leaving the run restores what was installed before."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with preemption.Watcher() as watcher:
        assert not watcher.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.requested() and watcher.signal_name == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with preemption.Watcher() as watcher:
        os.kill(os.getpid(), signal.SIGINT)
        assert watcher.requested() and watcher.signal_name == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stop = preemption.Preempted(7, "SIGTERM", "runs/x/checkpoints/7")
    assert exit_codes.user_error(stop) == (
        preemption.PREEMPTED_EXIT_CODE, f"preempted: {stop}") and "step 7" in str(stop)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A run stopped at step 5 (checkpoint 5), to resume from."""
    from mypt_jax.training import trainer

    tmp = tmp_path_factory.mktemp("startup_stop")
    dataset = train_helpers.make_dataset(tmp)
    trainer.train(train_helpers.tiny_config(
        dataset, tmp / "run", **{**OVERRIDES, "max_iters": 5}))
    return dataset, tmp / "run"


@pytest.mark.parametrize(("point", "resumed", "stop_step", "saved"), [
    ("restore", True, 5, False), ("compile", True, 5, False),
    pytest.param("eval", False, 1, True, marks=pytest.mark.slow)])
def test_a_stop_during_the_start_up_exits_75(resumable, tmp_path, point, resumed, stop_step,
                                             saved):
    """Before the first step nothing new was trained, so nothing is saved; a stop during the
    step-0 eval lands after the step in flight."""
    dataset, base = resumable
    run = tmp_path / "run"
    if resumed:
        shutil.copytree(base, run)
    cli = _cli(dataset, run, max_iters=40)
    out = train_helpers.run_module(train_helpers.signalled_during(cli, point, "SIGTERM"))
    assert out.returncode == PREEMPTED_EXIT_CODE, out.stderr[-3000:]
    assert f"preempted: SIGTERM: stopped at step {stop_step}, " in out.stderr, out.stderr[-3000:]
    assert _steps(run) == [5] * resumed + [stop_step] * saved
    (event,) = [r for r in train_helpers.read_log(run / "log.jsonl")
                if r.get("event") == "preempted"]
    assert (event["iter"], event["saved"]) == (stop_step, saved)
