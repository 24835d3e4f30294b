"""Resuming never continues on the wrong thing: damaged checkpoints are moved aside, a changed
dataset is refused, a failed save keeps the previous checkpoint, disagreeing hosts stop.

Every scenario runs the real command line in subprocesses and checks the one line the user
sees (no traceback) and what is left on disk.
"""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
import train_helpers
from test_preemption import run_processes

OVERRIDES = {
    "eval_interval": 10, "checkpoint_at_eval": True, "log_interval": 5, "eval_iters": 1,
    "dropout": 0.1, "n_embd": 32, "block_size": 32, "batch_size": 8, "tensorboard": False,
    "eval_prompts_file": "", "keep_best": 0,
}


def _cli(dataset, workdir, **extra):
    return train_helpers.train_cli("configs/cpu_tiny.py", workdir,
                                   {**OVERRIDES, "dataset_dir": dataset, **extra})


def _run(*args, **extra):
    out = train_helpers.run_module(_cli(*args, **extra))
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out


def _truncate_largest(step_dir) -> None:
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    with largest.open("r+b") as f:
        f.truncate(100)


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _run(dataset, ref, max_iters=30).returncode == 0
    assert _run(dataset, run, max_iters=20).returncode == 0
    _truncate_largest(run / "checkpoints" / "20")

    out = _run(dataset, run, max_iters=30)
    assert out.returncode == 0, out.stderr[-3000:]
    moved = run / "checkpoints" / "20.damaged"
    warning = f"warning: checkpoint 20 ({run / 'checkpoints' / '20'}) is damaged: "
    assert warning in out.stdout and f"moved to {moved}" in out.stdout, out.stdout[-3000:]
    assert moved.is_dir() and (moved / "state").is_dir()  # moved, never deleted
    log = train_helpers.read_log(run / "log.jsonl")
    assert [r["iter"] for r in log if r.get("event") == "start"] == [0, 10]
    assert [r["iter"] for r in log if r.get("event") == "damaged_checkpoint"] == [10]
    jax.tree.map(np.testing.assert_array_equal, train_helpers.final_params(ref),
                 train_helpers.final_params(run))

    # Every checkpoint damaged: one line naming each, exit 4, each moved aside.
    steps = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:
        _truncate_largest(run / "checkpoints" / step)
    out = _run(dataset, run, max_iters=40)
    assert out.returncode == 4, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("checkpoint error: ")]
    assert line.startswith(f"checkpoint error: no intact checkpoint in {run / 'checkpoints'}")
    for step in steps:
        assert f"checkpoint {step} ({run / 'checkpoints' / step}) is damaged" in line
        assert (run / "checkpoints" / f"{step}.damaged").is_dir()


def _swap_first_two_episodes(dataset) -> None:
    index = dataset / "train" / "episodes.idx"
    rows = np.fromfile(index, np.uint64).reshape(-1, 2)
    rows[[0, 1]] = rows[[1, 0]]
    rows.tofile(index)


@pytest.mark.slow
def test_a_changed_dataset_or_stream_field_is_refused_unless_allowed(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    run = tmp_path / "run"
    assert _run(dataset, run, max_iters=10).returncode == 0

    out = _run(dataset, run, max_iters=20, batch_size=4)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: resume from step 10 refused: config field batch_size: checkpoint 8, now 4" \
        in out.stderr

    _swap_first_two_episodes(dataset)
    out = _run(dataset, run, max_iters=20)
    assert out.returncode == 2, out.stderr[-3000:]
    assert (f"error: resume from step 10 refused: dataset file {dataset / 'train' / 'episodes.idx'}"
            ": checkpoint ") in out.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0", "10"]  # all kept

    out = _run(dataset, run, max_iters=20, allow_data_change=True)
    assert out.returncode == 0, out.stderr[-3000:]
    start = [r for r in train_helpers.read_log(run / "log.jsonl") if r.get("event") == "start"][-1]
    assert start["resumed"] and any(
        n.startswith("resume: data changed on purpose (allow_data_change): dataset file")
        for n in start["notes"]), start


# `python -m mypt_jax.train ARGS` whose checkpoint writer finds the disk full while it writes
# step {step}: orbax's JSON item fails after the state's arrays were written.
_FULL_DISK_AT = """
import errno, os, runpy, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
save_fn = jh.JsonCheckpointHandler._save_fn
async def full_disk(self, x, directory):
    if any(p == "{step}" or p.startswith("{step}.") for p in str(directory).split(os.sep)):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await save_fn(self, x, directory)
jh.JsonCheckpointHandler._save_fn = full_disk
sys.argv[0] = "mypt_jax.train"
runpy.run_module("mypt_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("async_checkpointing", ["off", "on"])  # on: the accelerators' default
def test_a_full_disk_during_a_save_stops_with_one_line_and_keeps_the_previous(
        tmp_path, async_checkpointing):
    dataset = train_helpers.make_dataset(tmp_path)
    run = tmp_path / "run"
    cli = _cli(dataset, run, max_iters=30, async_checkpointing=async_checkpointing)
    out = train_helpers.run_module(["-c", _FULL_DISK_AT.format(step=20), *cli[2:]])
    assert out.returncode == 4 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "No space left" not in out.stdout  # orbax's own report of it is not printed
    saves = [r["iter"] for r in train_helpers.read_log(run / "log.jsonl")
             if r.get("event") == "save"]
    assert saves == [0, 10]  # no save event for the failed one
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("checkpoint error: ")]
    assert line.startswith(f"checkpoint error: saving checkpoint {run / 'checkpoints' / '20'} "
                           "failed: No space left on device (errno 28); ")
    assert " MiB free at " in line and "the previous checkpoints are intact" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        "0", "10"]

    out = _run(dataset, run, max_iters=30)
    assert out.returncode == 0, out.stderr[-3000:]
    starts = [r for r in train_helpers.read_log(run / "log.jsonl") if r.get("event") == "start"]
    assert [(s["iter"], s["resumed"]) for s in starts] == [(0, False), (10, True)]


# ----------------------------------------------------------------------------- hosts disagree


def _host_dirs(tmp_path, dataset) -> list:
    """Two 'hosts': a directory each, with its own copy of the dataset at the same path."""
    hosts = [tmp_path / f"host{i}" for i in range(2)]
    for h in hosts:
        shutil.copytree(dataset, h / "ds")
    return hosts


def _in(host, *cli) -> list[str]:
    return ["-c", f"import os, runpy, sys; os.chdir({str(host)!r}); sys.argv[0] = 'x'; "
            "runpy.run_module('mypt_jax.train', run_name='__main__', alter_sys=True)", *cli]


@pytest.mark.slow
def test_processes_with_different_datasets_or_workdirs_stop_instead_of_hanging(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    config = str(train_helpers.REPO / "configs/cpu_tiny.py")
    mesh = {"mesh_data": 2, "mesh_fsdp": 1, "max_iters": 8}

    # The same relative dataset path, one copy edited.
    hosts = _host_dirs(tmp_path / "a", dataset)
    _swap_first_two_episodes(hosts[1] / "ds")
    shared = tmp_path / "a" / "shared_run"
    cli = train_helpers.train_cli(config, shared, {**OVERRIDES, **mesh, "dataset_dir": "ds"})[2:]
    results = run_processes(lambda i: _in(hosts[i], *cli), 2, 1, timeout=180)
    assert [rc for rc, _ in results] == [2, 2], results[0][1][-3000:]
    for _, text in results:
        (line,) = [x for x in text.splitlines() if x.startswith("error: ")]
        assert line.startswith("error: processes disagree on the dataset files: process 0 has ")
        assert ", process 1: " in line and "Traceback" not in text

    # The same relative workdir, so a local directory on each host; host 1's holds a run.
    hosts = _host_dirs(tmp_path / "b", dataset)
    cli = train_helpers.train_cli(config, "runs/x", {**OVERRIDES, **mesh, "dataset_dir": "ds"})[2:]
    single = train_helpers.run_module(_in(hosts[1], *cli, "--config.mesh_data=1"))
    assert single.returncode == 0, single.stderr[-3000:]
    results = run_processes(lambda i: _in(hosts[i], *cli), 2, 1, timeout=180)
    assert [rc for rc, _ in results] == [2, 2], results[0][1][-3000:]
    for _, text in results:
        (line,) = [x for x in text.splitlines() if x.startswith("error: ")]
        assert line.startswith("error: workdir ") and "process(es) [1] do not see the marker" in line


# `python -m mypt_jax.train ARGS` (in `host`) whose process 0 alone fails as it logs step 4:
# process-0-only I/O, a disk or bucket gone, as a bug would.
_PROCESS_0_FAILS = """
import os, runpy, sys
os.chdir({host!r})
from mypt_jax.training.observe import metrics
write = metrics.MetricsWriter.write
def failing(self, record):
    if os.environ["JAX_PROCESS_ID"] == "0" and record.get("iter") == 4:
        raise OSError(5, "Input/output error", "log.jsonl")
    return write(self, record)
metrics.MetricsWriter.write = failing
sys.argv[0] = "mypt_jax.train"
runpy.run_module("mypt_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_one_process_failing_stops_every_process_with_its_exit_code(tmp_path):
    """No process is left waiting in a collective for the heartbeat timeout."""
    dataset = train_helpers.make_dataset(tmp_path)
    config = str(train_helpers.REPO / "configs/cpu_tiny.py")
    # Two devices a process: with one each, the step-0 save fails on CPU (orbax, on main too).
    mesh = {"mesh_data": 2, "mesh_fsdp": 2, "max_iters": 8, "log_interval": 1}
    hosts = _host_dirs(tmp_path, dataset)
    shutil.rmtree(hosts[1] / "ds" / "train")  # missing on one host: fails in its resolve
    cli = train_helpers.train_cli(config, tmp_path / "run",
                                  {**OVERRIDES, **mesh, "dataset_dir": "ds"})[2:]
    results = run_processes(lambda i: _in(hosts[i], *cli), 2, 2, timeout=90)
    assert [rc for rc, _ in results] == [2, 2], results[0][1][-3000:]
    (line,) = [x for x in results[0][1].splitlines() if x.startswith("error: ")]
    assert line.startswith("error: process 1 failed (exit 2): config error: dataset_dir: ")

    shutil.copytree(hosts[0] / "ds", hosts[1] / "ds", dirs_exist_ok=True)
    results = run_processes(
        lambda i: ["-c", _PROCESS_0_FAILS.format(host=str(hosts[i])), *cli], 2, 2, timeout=90)
    assert [rc for rc, _ in results] == [1, 1], results[1][1][-3000:]
    assert "OSError: [Errno 5] Input/output error" in results[0][1]
    (line,) = [x for x in results[1][1].splitlines() if x.startswith("error: ")]
    assert line.startswith("error: process 0 failed (exit 1): OSError: [Errno 5] Input/output")


def test_the_fingerprint_names_the_changed_file_and_the_stream_field(tmp_path):
    """In-process, the check the resume tests above run end to end: a changed byte of a
    dataset file or a changed stream field refuses the resume naming it, unless allowed."""
    from mypt_jax.training.setup import identity

    dataset = train_helpers.make_dataset(tmp_path, n=20)
    config = train_helpers.tiny_config(dataset, tmp_path / "run")
    saved = identity.data_identity(config)
    assert {"train/tokens.bin", "train/episodes.idx", "val/tokens.bin"} <= set(saved["dataset"])
    assert identity.check_resume(saved, identity.data_identity(config), dataset_dir=str(dataset),
                                 step=5, allow=False) == []
    tokens = dataset / "train" / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[len(data) // 2] ^= 1
    tokens.write_bytes(bytes(data))
    config.batch_size = 4
    now = identity.data_identity(config)
    with pytest.raises(identity.DataChangedError, match=r"^resume from step 5 refused: config "
                                                        r"field batch_size: checkpoint 8, now 4 "
                                                        r"\(and 1 more\)"):
        identity.check_resume(saved, now, dataset_dir=str(dataset), step=5, allow=False)
    notes = identity.check_resume(saved, now, dataset_dir=str(dataset), step=5, allow=True)
    assert len(notes) == 2 and f"dataset file {tokens}" in notes[1]
