"""Preemption and restart: the worker's restart loop and stop's marker (launchlib), and
`tpu.py supervise` (launch/supervise.py), run against fake trainers and a fake gcloud."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import (  # one copy of the helpers, and of the loaded launch modules
    GCLOUD_TPU,
    NASTY,
    ROOT,
    SUPERVISE,
    V4_RUN,
    dry,
    end,
    gpu,
    launchlib,
    loop_in,
    make_checkout,
    script_of,
    tpu,
    trainer_argv_in,
    wait_for,
    wait_for_line,
)

# --- the restart loop on a worker, and stop -------------------------------------------------

# Like the trainer: FAKE_PLAN lists what each start does: an exit status, or "signal": wait for
# SIGTERM/SIGINT, then exit 75 as the trainer does once its checkpoint is saved.
COUNTING_TRAINER = """#!{python}
import os, signal, sys, time
runs = int(open("count").read()) if os.path.exists("count") else 0
open("count", "w").write(str(runs + 1))
plan = os.environ["FAKE_PLAN"].split(",")
step = plan[min(runs, len(plan) - 1)]
if step == "signal":
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(75))
    open("trainer.pid.tmp", "w").write(str(os.getpid()))
    os.replace("trainer.pid.tmp", "trainer.pid")  # once the handlers are in place
    time.sleep(60)
    sys.exit(1)
sys.exit(int(step))
"""


def counting_checkout(root: Path) -> Path:
    return make_checkout(root, COUNTING_TRAINER)


def start_locally(checkout: Path, plan: str, capsys, *flags: str) -> None:
    """Runs gpu.py's start script for run `r` with bash, as `gpu.py run` on this machine would."""
    base = ["--remote_dir", str(checkout), "--dry_run"]
    (command,) = dry(
        gpu.main, ["run", *base, "--run_name", "r", "--env", f"FAKE_PLAN={plan}", *flags], capsys
    )
    started = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr


def bash(script: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=30
    )


def status_of(checkout: Path) -> str:
    return bash(launchlib.status_script(str(checkout), "r")).stdout.strip()


def test_preempted_exit_code_matches_the_trainer():
    from mypt_jax.training.checkpoint.preemption import PREEMPTED_EXIT_CODE

    assert launchlib.PREEMPTED_EXIT_CODE == PREEMPTED_EXIT_CODE == 75
    from mypt_jax.training.checkpoint.read_faults import TRANSIENT_EXIT_CODE

    assert launchlib.STORAGE_EXIT_CODE == TRANSIENT_EXIT_CODE == 74


def test_restart_loop_is_in_the_start_script(capsys):
    (command,) = dry(
        tpu.main, [*V4_RUN, "--run_name", "a1", "--max_restarts", "7", "--dry_run"], capsys
    )
    loop = loop_in(script_of(command))
    assert 'trap "signalled=1" TERM' in loop and "while :; do" in loop
    assert "[ $rc -ne 75 ]" in loop and "[ -e logs/a1.stopped ]" in loop
    assert "[ $n -ge 7 ]" in loop and "mv -f logs/a1.rc.tmp logs/a1.rc" in loop
    # A new start clears the last run's verdict and its stop marker.
    assert "rm -f logs/a1.rc logs/a1.stopped;" in script_of(command)
    assert tpu.main([*V4_RUN, "--max_restarts", "-1", "--dry_run"]) == 1
    assert "--max_restarts -1: expected 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plan", "flags", "runs", "rc", "why"),
    [
        ("75,0", [], 2, 0, "finished"),  # preempted once, resumed, finished
        ("75,75,3", [], 3, 3, "finished"),  # only 75 restarts: a crash ends the loop
        ("3,0", [], 1, 3, "finished"),
        ("75", ["--max_restarts", "2"], 3, 75, "2 restarts, giving up"),
        # The checkpoint storage was down: a few reruns, then a person looks.
        ("74,75,0", [], 3, 0, "finished"),
        ("74", [], 1 + launchlib.STORAGE_RERUNS, 74,
         f"{launchlib.STORAGE_RERUNS} reruns, giving up"),
    ],
)
def test_restart_loop_reruns_the_trainer_only_after_exit_75_or_74(
    tmp_path, capsys, monkeypatch, plan, flags, runs, rc, why
):
    monkeypatch.setenv(launchlib.PAUSE_ENV, "0")
    checkout = counting_checkout(tmp_path / "checkout")
    try:
        assert status_of(checkout) == "none"
        start_locally(checkout, plan, capsys, *flags)
        log = wait_for_line(checkout / "logs" / "r.log", "ended:")
        assert f"run r ended: exit {rc} ({why})" in log
        assert int((checkout / "count").read_text()) == runs
        assert (checkout / "logs" / "r.rc").read_text().strip() == str(rc)
        assert (log.count("exited 75 (preempted, checkpoint saved): restart")
                + log.count("exited 74 (checkpoint storage unavailable): rerun")) == runs - 1
        assert status_of(checkout) == f"exit {rc}"
    finally:
        end(checkout / "logs" / "r.pid")


def test_a_preempted_trainer_is_restarted_but_a_stopped_run_is_not(tmp_path, capsys):
    checkout = counting_checkout(tmp_path / "checkout")
    trainer_pid, log = checkout / "trainer.pid", checkout / "logs" / "r.log"
    stop_argv = ["stop", "--remote_dir", str(checkout), "--run_name", "r", "--dry_run"]
    try:
        # A SIGTERM that reaches the trainer alone (as a preemption notice would): it saves,
        # exits 75, and the loop runs the same command again.
        start_locally(checkout, "signal,signal", capsys)
        wait_for(trainer_pid)
        first = int(trainer_pid.read_text())
        trainer_pid.unlink()
        os.kill(first, signal.SIGTERM)
        wait_for(trainer_pid)
        assert "restart 1 of 100" in log.read_text() and status_of(checkout) == "running"
        # `stop` (SIGINT here: the background loop cannot trap it, so only the marker, written
        # before the signal, keeps the loop from restarting).
        (stop,) = dry(gpu.main, [*stop_argv, "--signal", "INT"], capsys)
        stopped = subprocess.run(stop, capture_output=True, text=True, timeout=30)
        assert stopped.returncode == 0 and "sent SIGINT to run r" in stopped.stdout
        assert "ended: exit 75 (stopped, not restarted)" in wait_for_line(log, "ended:")
        assert int((checkout / "count").read_text()) == 2
        assert (checkout / "logs" / "r.stopped").exists()
        assert status_of(checkout) == "stopped"
    finally:
        end(checkout / "logs" / "r.pid")


def test_stop_with_sigterm_saves_and_does_not_restart(tmp_path, capsys):
    checkout = counting_checkout(tmp_path / "mypt-jax")
    (run,) = dry(
        tpu.main, [*V4_RUN, "--run_name", "r", "--env", "FAKE_PLAN=signal", "--dry_run"], capsys
    )
    (stop,) = dry(tpu.main, ["stop", "--name", "t", "--zone", "z", "--dry_run"], capsys)
    assert script_of(stop).index(".stopped") < script_of(stop).index("kill -TERM")
    try:
        started = bash(script_of(run), cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        wait_for(checkout / "trainer.pid")
        # Without a marker: the loop shell's own TERM (the whole group was signalled) says stop.
        (checkout / "logs" / "r.stopped").unlink(missing_ok=True)
        pid = int((checkout / "logs" / "r.pid").read_text())
        os.killpg(pid, signal.SIGTERM)
        log = wait_for_line(checkout / "logs" / "r.log", "ended:")
        assert "ended: exit 75 (stopped, not restarted)" in log
        assert int((checkout / "count").read_text()) == 1
        # And through `stop` itself (latest -> r), which also leaves the marker.
        (checkout / "trainer.pid").unlink()
        again = bash(script_of(run), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert not (checkout / "logs" / "r.rc").exists()  # the new start cleared it
        wait_for(checkout / "trainer.pid")
        stopped = bash(script_of(stop), cwd=tmp_path)
        assert "sent SIGTERM to run latest" in stopped.stdout, stopped.stderr
        log = wait_for_line(checkout / "logs" / "r.log", "ended:", times=2)
        assert log.count("ended: exit 75 (stopped, not restarted)") == 2
        assert int((checkout / "count").read_text()) == 2
        assert (checkout / "logs" / "r.stopped").exists()
    finally:
        end(checkout / "logs" / "r.pid")


# --- supervise ------------------------------------------------------------------------------


def test_supervise_dry_run_recreates_a_preempted_vm_with_the_same_flags(capsys):
    where = "--name p --zone z --project proj --accelerator_type v5p-32".split()
    run_flags = ["--run_name", "s1", "--workdir", "gs://b/runs/s1", "--env", "A=b c"]
    supervise = ["supervise", *where, "--spot", *run_flags, "--data", "gs://b/d", "--dry_run"]
    commands = dry(tpu.main, [*supervise, "--", NASTY], capsys)
    (create,) = dry(tpu.main, ["create", *where, "--spot", "--dry_run"], capsys)
    (run,) = dry(tpu.main, ["run", *where, *run_flags, "--dry_run", "--", NASTY], capsys)
    head = [*GCLOUD_TPU, "describe", "p", "--zone=z", "--project=proj", "--format=value(state)"]
    assert commands[0] == head
    assert commands[1][:9] == [*GCLOUD_TPU, "ssh", "p", "--zone=z", "--project=proj", "--worker=0"]
    assert script_of(commands[1]) == launchlib.status_script("mypt-jax", "s1")
    assert commands[2] == [*GCLOUD_TPU, "delete", "p", "--zone=z", "--project=proj", "--quiet"]
    assert commands[3] == create and "--spot" in create
    # setup ships the commit HEAD is now, so every re-created VM gets the same code.
    head_sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert commands[4][:4] == ["git", "-C", str(ROOT), "archive"] and commands[4][-1] == head_sha
    assert "gsutil -m cp -r gs://b/d" in script_of(commands[8])
    assert commands[-1] == run and "--distributed" in trainer_argv_in(script_of(run))
    assert trainer_argv_in(script_of(run))[-1] == NASTY
    # Gone: create without delete. Up, after an exit 75 the worker did not rerun: run alone.
    gone = dry(tpu.main, [*supervise, "--state", "GONE", "--", NASTY], capsys)
    assert gone[2] == create and gone[-1] == run and len(gone) == len(commands) - 1
    assert dry(tpu.main, [*supervise, "--state", "READY", "--", NASTY], capsys)[2:] == [run]


def test_supervise_refuses_a_workdir_that_dies_with_the_vm(capsys):
    one_worker = "supervise --name t --zone z --accelerator_type v4-8 --dry_run".split()
    assert tpu.main([*one_worker, "--run_name", "s1"]) == 1
    assert "a re-created VM starts from an empty disk" in capsys.readouterr().err
    assert tpu.main([*one_worker, "--run_name", "s1", "--workdir", "gs://b/s1"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tpu.main(one_worker)
    assert "required: --run_name" in capsys.readouterr().err


# A gcloud that answers describe with the next line of `states` (GONE: NOT_FOUND) and the status
# ssh (--worker=0) with the next line of `statuses`; the last line repeats. Every call is logged.
FAKE_GCLOUD = """#!{python}
import json, os, sys
here = os.environ["FAKE_GCLOUD_DIR"]
args = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
def pop(name):
    path = os.path.join(here, name)
    lines = open(path).read().splitlines()
    open(path, "w").write("\\n".join(lines[1:] or lines) + "\\n")
    return lines[0]
if "describe" in args:
    state = pop("states")
    if state == "GONE":
        sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'p' was not found")
    print(state)
elif "--worker=0" in args:
    print(pop("statuses"))
elif "create" in args and os.path.exists(os.path.join(here, "no_capacity")):
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.create) RESOURCE_EXHAUSTED: no more capacity")
"""


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    here = tmp_path / "gcloud"
    here.mkdir()
    gcloud = here / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(0o755)
    monkeypatch.setenv("PATH", f"{here}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_DIR", str(here))
    # This machine may have a real gcloud: supervise must find this one first, or not run at all.
    assert shutil.which("gcloud") == str(gcloud)

    def answer(states: list[str], statuses: list[str]) -> Path:
        (here / "states").write_text("\n".join(states) + "\n")
        (here / "statuses").write_text("\n".join(statuses) + "\n")
        return here / "calls.jsonl"

    return answer


SUPERVISE_LIVE = [*SUPERVISE, "--repo_url", "https://e.com/r.git", "--ref", "v1", "--poll_s", "0"]


def calls_of(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def kind(call: list[str]) -> str:
    return call[3] + (f" {call[6]}" if call[3] == "ssh" else "")  # ssh: which workers


def test_supervise_recreates_a_preempted_vm_and_stops_when_the_run_ends(fake_gcloud, capsys):
    calls = fake_gcloud(["READY", "PREEMPTED", "READY"], ["running", "running", "exit 0"])
    assert tpu.main(SUPERVISE_LIVE) == 0
    plan = dry(tpu.main, [*SUPERVISE_LIVE, "--dry_run"], capsys)
    seen = calls_of(calls)
    assert [kind(c) for c in seen] == [
        "describe", "ssh --worker=0", "describe",
        "delete", "create", "ssh --worker=all", "ssh --worker=all", "ssh --worker=all",
        "describe", "ssh --worker=0", "describe", "ssh --worker=0",
    ]  # fmt: skip
    assert seen[3:8] == [c[1:] for c in plan[2:]]  # delete, create, checkout, install, run
    assert "--spot" in seen[4] and "--distributed" in trainer_argv_in(script_of(seen[7]))


def test_supervise_reruns_after_exit_75_and_gives_up_on_a_crash(fake_gcloud, capsys):
    calls = fake_gcloud(["READY"], ["exit 75", "running", "exit 3"])
    assert tpu.main(SUPERVISE_LIVE) == 1
    err = capsys.readouterr().err
    assert "run s1 on p ended with 'exit 3' on worker 0: not restarting" in err
    assert [kind(c) for c in calls_of(calls)].count("ssh --worker=all") == 1  # the run alone
    # A run stopped on purpose ends supervision.
    calls.unlink()
    fake_gcloud(["READY"], ["stopped"])
    assert tpu.main(SUPERVISE_LIVE) == 0 and len(calls_of(calls)) == 2


def test_supervise_bounds_relaunches_and_failed_rounds(fake_gcloud, capsys):
    calls = fake_gcloud(["READY"], ["exit 75"])
    assert tpu.main([*SUPERVISE_LIVE, "--max_relaunches", "2"]) == 1
    assert "started 3 times already (--max_relaunches 2)" in capsys.readouterr().err
    assert [kind(c) for c in calls_of(calls)].count("ssh --worker=all") == 3
    # No capacity: create fails round after round; tried again until --max_failures.
    calls.unlink()
    fake_gcloud(["GONE"], ["none"])
    (calls.parent / "no_capacity").touch()
    assert tpu.main([*SUPERVISE_LIVE, "--max_failures", "3"]) == 1
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED" not in err.splitlines()[-1] and "(3 rounds in a row failed)" in err
    assert [kind(c) for c in calls_of(calls)] == ["describe", "create"] * 3
