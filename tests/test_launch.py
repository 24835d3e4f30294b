"""launch/tpu.py and launch/gpu.py: the commands their dry runs print, and the scripts they run.

The restart loop and `tpu.py supervise` are tested in test_launch_restart.py, which imports the
helpers below (and the loaded tpu and gpu modules) from here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
sys.path.insert(0, str(LAUNCH))  # tpu.py / gpu.py import their sibling launchlib.py

import launchlib  # noqa: E402


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"mypt_launch_{name}", LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tpu = _load("tpu")
gpu = _load("gpu")

TRAINER = [".venv/bin/python", "-m", "mypt_jax.train"]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
V4_RUN = ["run", "--name", "t", "--zone", "z", "--accelerator_type", "v4-8"]
V5P_RUN = ["run", "--name", "p", "--zone", "z", "--accelerator_type", "v5p-32"]
SUPERVISE = (
    "supervise --name p --zone z --accelerator_type v5p-32 --spot "
    "--run_name s1 --workdir gs://b/runs/s1"
).split()
# An override that a naive f-string would break: space, both quote kinds, $, ; and a glob.
NASTY = '--config.note=it\'s a "test"; $HOME *'


def dry_with_notes(main, argv: list[str], capsys) -> tuple[list[list[str]], str]:
    """Runs main(argv) (a dry run): each printed line split back into argv, and stderr."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return [shlex.split(line) for line in out.splitlines()], err


def dry(main, argv: list[str], capsys) -> list[list[str]]:
    return dry_with_notes(main, argv, capsys)[0]


def script_of(command: list[str]) -> str:
    """The shell script inside a `gcloud ... ssh --command=...`, `ssh host ...` or `bash -c ...`."""
    if command[0] == "gcloud":
        (arg,) = [a for a in command if a.startswith("--command=")]
        return arg[len("--command=") :]
    return command[-1]


def loop_in(script: str) -> str:
    """The restart loop that a start script runs detached (`nohup setsid bash -c LOOP`)."""
    words = shlex.split(script)
    start = words.index("setsid") + 1
    assert words[start : start + 2] == ["bash", "-c"] and words[start + 3] == ">>", words
    return words[start + 2]


def trainer_argv_in(script: str) -> list[str]:
    """The command the loop runs (with `env NAME=VALUE ...` in front when there is one)."""
    words = shlex.split(loop_in(script))
    start = words.index("do") + 1
    return words[start : words.index(";", start)]


def launch(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCH / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def wait_for_line(path: Path, text: str, times: int = 1, timeout: float = 20.0) -> str:
    """Waits until `text` is in the file `times` times; returns the file's contents."""
    deadline = time.monotonic() + timeout
    while (content := path.read_text() if path.exists() else "").count(text) < times:
        assert time.monotonic() < deadline, f"{text!r} not in {path} within {timeout} s: {content}"
        time.sleep(0.05)
    return content


# --- tpu.py -------------------------------------------------------------------------------


def test_tpu_create_v4_8_and_v5p_32(capsys):
    assert dry(
        tpu.main,
        [
            "create",
            "--name",
            "t",
            "--zone",
            "us-central2-b",
            "--accelerator_type",
            "v4-8",
            "--dry_run",
        ],
        capsys,
    ) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "t",
            "--zone=us-central2-b",
            "--accelerator-type=v4-8",
            "--version=tpu-ubuntu2204-base",
        ]
    ]
    assert dry(
        tpu.main,
        [
            "create",
            "--name",
            "p",
            "--zone",
            "us-east5-a",
            "--project",
            "proj",
            "--accelerator_type",
            "v5p-32",
            "--spot",
            "--dry_run",
        ],
        capsys,
    ) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "p",
            "--zone=us-east5-a",
            "--project=proj",
            "--accelerator-type=v5p-32",
            "--version=v2-alpha-tpuv5",
            "--spot",
        ]
    ]


def test_tpu_create_rejects_unknown_accelerators(capsys):
    assert (
        tpu.main(
            ["create", "--name", "t", "--zone", "z", "--accelerator_type", "v9x-8", "--dry_run"]
        )
        == 1
    )
    assert "pass --version" in capsys.readouterr().err
    assert (
        tpu.main(
            ["create", "--name", "t", "--zone", "z", "--accelerator_type", "tpu8", "--dry_run"]
        )
        == 1
    )
    assert "expected a name like v4-8" in capsys.readouterr().err
    # An explicit runtime makes a new generation usable.
    (command,) = dry(
        tpu.main,
        [
            "create",
            "--name",
            "t",
            "--zone",
            "z",
            "--accelerator_type",
            "v9x-8",
            "--version",
            "v2-alpha-tpuv9",
            "--dry_run",
        ],
        capsys,
    )
    assert "--version=v2-alpha-tpuv9" in command


def test_missing_required_flag_is_an_argparse_error():
    result = launch("tpu.py", "create", "--zone", "z", "--dry_run")
    assert result.returncode == 2
    assert "the following arguments are required: --name, --accelerator_type" in result.stderr
    assert result.stdout == ""
    result = launch("gpu.py", "--dry_run")
    assert result.returncode == 2 and "required: SUBCOMMAND" in result.stderr


def test_tpu_setup_ships_the_checkout_installs_and_copies_data(capsys, tmp_path):
    checkpoint = tmp_path / "base_ckpt"
    checkpoint.mkdir()
    commands, err = dry_with_notes(
        tpu.main,
        [
            "setup",
            "--name",
            "t",
            "--zone",
            "z",
            "--dry_run",
            "--data",
            "gs://bucket/sft/phase3a1/",
            "--init_from",
            str(checkpoint),
        ],
        capsys,
    )
    where = ["--zone=z", "--worker=all"]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", *where]
    tarball = launchlib.tarball_path("t")
    assert commands[0] == [
        "git",
        "-C",
        str(ROOT),
        "archive",
        "--format=tar.gz",
        f"--output={tarball}",
        "HEAD",
    ]
    assert commands[1] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        tarball,
        "t:mypt-jax-src.tar.gz",
        *where,
    ]
    assert commands[2][:-1] == ssh and "tar -xzf mypt-jax-src.tar.gz -C mypt-jax" in commands[2][-1]
    install = script_of(commands[3])
    assert commands[3][:-1] == ssh
    assert shlex.split(install)[-3:] == ["-e", ".", "jax[tpu]==0.10.2"]
    assert "python3.11 -m venv .venv" in install and "python3.11-venv" in install
    assert script_of(commands[4]) == (
        "mkdir -p mypt-jax/data/sft_ready && "
        "gsutil -m cp -r gs://bucket/sft/phase3a1 mypt-jax/data/sft_ready/"
    )
    assert script_of(commands[5]) == "mkdir -p mypt-jax/checkpoints"
    assert commands[6] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        "--recurse",
        str(checkpoint),
        "t:mypt-jax/checkpoints/",
        *where,
    ]
    assert len(commands) == 7
    assert (
        "--dataset_dir=data/sft_ready/phase3a1" in err
        and "--init_from=checkpoints/base_ckpt" in err
    )


def test_tpu_setup_from_git_and_bad_local_data(capsys):
    commands = dry(
        tpu.main,
        [
            "setup",
            "--name",
            "t",
            "--zone",
            "z",
            "--repo_url",
            "https://example.com/me/mypt-jax.git",
            "--ref",
            "v1",
            "--dry_run",
        ],
        capsys,
    )
    assert len(commands) == 2  # checkout, install: nothing shipped from here
    assert shlex.split(script_of(commands[0]))[-6:] == [
        "-C",
        "mypt-jax",
        "checkout",
        "-q",
        "--detach",
        "v1",
    ]
    assert "git clone -q https://example.com/me/mypt-jax.git mypt-jax" in script_of(commands[0])
    assert (
        tpu.main(["setup", "--name", "t", "--zone", "z", "--data", "/no/such/dir", "--dry_run"])
        == 1
    )
    assert "/no/such/dir: no such local path" in capsys.readouterr().err


def test_tpu_run_quotes_overrides_for_the_remote_shell(capsys):
    (command,) = dry(
        tpu.main,
        [
            "run",
            "--name",
            "t",
            "--zone",
            "z",
            "--accelerator_type",
            "v4-8",
            "--run_name",
            "a1",
            "--dataset_dir",
            "data/phase3a1",
            "--init_from",
            "gs://b/ckpt",
            "--dry_run",
            "--",
            "--config.batch_size=16",
            NASTY,
        ],
        capsys,
    )
    assert command[:8] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "t",
        "--zone=z",
        "--worker=all",
    ]
    script = script_of(command)
    assert trainer_argv_in(script) == [
        *TRAINER,
        "--config=configs/phase3a1_gamma.py",
        "--workdir=runs/a1",
        "--config.dataset_dir=data/phase3a1",
        "--config.init_from=gs://b/ckpt",
        "--config.batch_size=16",
        NASTY,
    ]
    words = shlex.split(script)
    assert words[words.index(">>") + 1] == "logs/a1.log" and "nohup" in words


def test_tpu_tail_stop_delete(capsys):
    (tail,) = dry(
        tpu.main, ["tail", "--name", "t", "--zone", "z", "--worker", "3", "--dry_run"], capsys
    )
    assert "--worker=3" in tail and script_of(tail) == "tail -n 100 -F mypt-jax/logs/latest.log"
    (stop,) = dry(
        tpu.main,
        ["stop", "--name", "t", "--zone", "z", "--run_name", "a1", "--pkill", "--dry_run"],
        capsys,
    )
    assert "--worker=all" in stop
    assert 'kill -TERM -- "-$p"' in script_of(stop) and "logs/a1.pid" in script_of(stop)
    assert shlex.split(script_of(stop))[-7:] == [
        "pkill",
        "-TERM",
        "-f",
        "--",
        "-m mypt_jax[.]train",
        "||",
        "true",
    ]
    assert dry(
        tpu.main, ["delete", "--name", "t", "--zone", "z", "--yes", "--dry_run"], capsys
    ) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "t", "--zone=z", "--quiet"]]


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(SystemExit) as e:
        tpu.main(["stop", "--name", "t", "--zone", "z", "--dry_run", "--", "--config.x=1"])
    assert e.value.code == 2 and "only `run` and `supervise` take them" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpu.main(["run", "--name", "t", "--zone", "z", "--run_name", "../x", "--dry_run"])
    assert "'../x': use letters" in capsys.readouterr().err
    latest = ["run", "--name", "t", "--zone", "z", "--workers", "1", "--run_name", "latest"]
    assert tpu.main([*latest, "--dry_run"]) == 1
    assert "reserved" in capsys.readouterr().err
    assert gpu.main(["run", "--env", "NOEQUALS", "--dry_run"]) == 1
    assert "--env 'NOEQUALS': expected NAME=VALUE" in capsys.readouterr().err
    assert gpu.main(["setup", "--repo_url", "https://example.com/x.git", "--dry_run"]) == 1
    assert "--repo_url needs --host" in capsys.readouterr().err


def test_every_generated_script_is_valid_bash(capsys, tmp_path):
    argvs = [
        (
            tpu.main,
            [
                "setup",
                "--name",
                "t",
                "--zone",
                "z",
                "--data",
                "gs://b/d",
                "--init_from",
                str(tmp_path),
            ],
        ),
        (tpu.main, ["setup", "--name", "t", "--zone", "z", "--repo_url", "https://e.com/r.git"]),
        (
            tpu.main,
            ["run", "--name", "t", "--zone", "z", "--workers", "1", "--env", "A=b c", "--", NASTY],
        ),
        (tpu.main, [*V5P_RUN, "--workdir", "gs://b/r", "--max_restarts", "3"]),
        (tpu.main, [*SUPERVISE, "--data", "gs://b/d", "--", NASTY]),
        (tpu.main, [*SUPERVISE, "--state", "GONE"]),
        (tpu.main, ["stop", "--name", "t", "--zone", "z", "--pkill"]),
        (tpu.main, ["tail", "--name", "t", "--zone", "z"]),
        (gpu.main, ["setup", "--host", "u@h", "--data", "gs://b/d"]),
        (gpu.main, ["run", "--host", "u@h", "--", NASTY]),
        (gpu.main, ["stop"]),
    ]
    scripts = []
    for main, argv in argvs:
        for command in dry(main, [*argv[:1], "--dry_run", *argv[1:]], capsys):
            if command[0] in ("ssh", "bash") or command[:5] == [*GCLOUD_TPU, "ssh"]:
                scripts.append(script_of(command))
    assert len(scripts) >= 18
    for script in scripts:
        result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)


def test_worker_count_per_accelerator_type():
    expected = {
        "v4-8": 1, "v4-16": 2, "v4-32": 4, "v5p-8": 1, "v5p-32": 4, "v2-32": 4, "v5litepod-4": 1,
        "v5litepod-8": 1, "v5litepod-16": 4, "v6e-8": 1, "v6e-256": 64, "v9x-8": None,
    }  # fmt: skip
    assert {t: tpu.worker_count(t) for t in expected} == expected


def test_multi_worker_run_is_distributed_and_needs_a_shared_workdir(capsys):
    def trainer(*argv, extra=()):
        (command,) = dry(tpu.main, [*argv, "--run_name", "a1", "--dry_run", *extra], capsys)
        return trainer_argv_in(script_of(command))

    assert "--distributed" not in trainer(*V4_RUN)
    argv = trainer(*V5P_RUN, "--workdir", "gs://b/runs/a1")
    assert argv[3:6] == [
        "--config=configs/phase3a1_gamma.py",
        "--workdir=gs://b/runs/a1",
        "--distributed",
    ]
    given = trainer(*V5P_RUN, "--workdir", "gs://b/r", extra=["--", "--distributed"])
    assert given.count("--distributed") == 1
    argv = trainer(*V5P_RUN, "--shared_workdir", "/mnt/nfs/runs/a1")
    assert "--workdir=/mnt/nfs/runs/a1" in argv and "--distributed" in argv
    assert "--distributed" in trainer(
        "run", "--name", "n", "--zone", "z", "--workers", "2", "--workdir", "gs://b/r"
    )

    def refused(*argv) -> str:
        assert tpu.main([*argv, "--run_name", "a1", "--dry_run"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("launch/tpu.py: error: ")
        return err

    err = refused(*V5P_RUN)
    assert "the default workdir runs/a1 is on each worker's own disk" in err
    assert "the 4 workers of this slice write one checkpoint together" in err
    assert "--workdir gs://BUCKET/PATH" in err and "--shared_workdir /PATH" in err
    assert "--workdir /mnt/nfs/a1 is on each worker's own disk" in refused(
        *V5P_RUN, "--workdir", "/mnt/nfs/a1"
    )
    assert "expected an absolute path" in refused(*V5P_RUN, "--shared_workdir", "nfs/a1")
    assert "pass --accelerator_type (as given to create) or --workers N" in refused(
        "run", "--name", "t", "--zone", "z"
    )
    assert "cannot tell how many workers it has" in refused(*V4_RUN[:-1], "v9x-64")
    assert "a v5p-32 slice has 4 workers" in refused(
        *V5P_RUN, "--workers", "2", "--workdir", "gs://b/r"
    )
    with pytest.raises(SystemExit):  # argparse: one workdir or the other
        tpu.main([*V5P_RUN, "--workdir", "gs://b/r", "--shared_workdir", "/mnt/r", "--dry_run"])
    assert "not allowed with argument" in capsys.readouterr().err


# --- gpu.py -------------------------------------------------------------------------------


def test_gpu_run_over_ssh_sets_xla_env(capsys):
    (command,) = dry(
        gpu.main,
        [
            "run",
            "--host",
            "me@box",
            "--run_name",
            "g1",
            "--gpus",
            "0,1",
            "--xla_flag=--xla_dump_to=/tmp/hlo",
            "--env",
            "MY_VAR=x y",
            "--dry_run",
            "--",
            "--config.mesh_data=-1",
            NASTY,
        ],
        capsys,
    )
    assert command[:2] == ["ssh", "me@box"] and len(command) == 3
    words = trainer_argv_in(command[2])
    assert words[0] == "env"
    env = words[1 : words.index(TRAINER[0])]
    assert env == [
        "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "XLA_FLAGS=" + " ".join([*gpu.DEFAULT_XLA_FLAGS, "--xla_dump_to=/tmp/hlo"]),
        "CUDA_VISIBLE_DEVICES=0,1",
        "MY_VAR=x y",
    ]
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in gpu.DEFAULT_XLA_FLAGS
    assert trainer_argv_in(command[2])[-2:] == ["--config.mesh_data=-1", NASTY]
    assert "cd mypt-jax;" in command[2]


def test_gpu_setup_local_and_remote(capsys):
    # This machine: no shipping, only the venv, with the CUDA 12 wheel of the pinned jax.
    (install,) = dry(gpu.main, ["setup", "--dry_run"], capsys)
    assert install[:2] == ["bash", "-c"]
    assert shlex.split(install[2])[:2] == ["cd", str(ROOT)]
    assert shlex.split(install[2])[-1] == "jax[cuda12]==0.10.2"
    commands = dry(gpu.main, ["setup", "--host", "me@box", "--cuda", "13", "--dry_run"], capsys)
    assert [c[0] for c in commands] == ["git", "scp", "ssh", "ssh"]
    assert commands[1] == ["scp", launchlib.tarball_path("me@box"), "me@box:mypt-jax-src.tar.gz"]
    assert shlex.split(commands[3][2])[-1] == "jax[cuda13]==0.10.2"


def test_gpu_default_xla_flags_are_known_to_the_installed_jaxlib():
    """XLA aborts on an unknown XLA_FLAGS entry; flags get renamed and removed between releases."""
    probe = "import jax.numpy as jnp; jnp.ones(2).sum().block_until_ready()"

    def run_with(flags):
        env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
        return subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
        )

    result = run_with(gpu.DEFAULT_XLA_FLAGS)
    assert result.returncode == 0, result.stderr[-2000:]
    # The check can fail: a flag this jaxlib does not know is fatal.
    result = run_with([*gpu.DEFAULT_XLA_FLAGS, "--xla_gpu_graph_level=0"])
    assert result.returncode != 0 and "Unknown flag" in result.stderr


# --- running for real (bash on this machine stands in for the remote shell) ------------------

FAKE_TRAINER = """#!{python}
import json, os, signal, sys, time
def on_term(*_):
    open("terminated", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
names = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "MY_VAR")
record = {{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in names}},
          "pid": os.getpid(), "pgid": os.getpgid(0)}}
with open("record.json.tmp", "w") as f:
    json.dump(record, f)
os.replace("record.json.tmp", "record.json")
print("hello from the fake trainer", flush=True)
time.sleep(60)
"""


def make_checkout(root: Path, trainer: str = FAKE_TRAINER) -> Path:
    """A checkout whose `.venv/bin/python` is the fake `trainer` script."""
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(trainer.format(python=sys.executable))
    python.chmod(0o755)
    return root


def end(pid_file: Path) -> None:
    """Kills what a test's start script started: the restart loop's process group, by its pid."""
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_gpu_local_run_tail_stop_end_to_end(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    record = checkout / "record.json"
    pid_file = checkout / "logs" / "e2e.pid"
    base = ["--remote_dir", str(checkout)]
    try:
        result = launch(
            "gpu.py",
            "run",
            *base,
            "--run_name",
            "e2e",
            "--env",
            "MY_VAR=x y",
            "--",
            "--config.batch_size=16",
            NASTY,
        )
        assert result.returncode == 0, result.stderr
        assert re.search(r"started run e2e on .*: pid \d+", result.stdout)
        wait_for(record)
        seen = json.loads(record.read_text())
        assert seen["argv"] == [
            "-m",
            "mypt_jax.train",
            "--config=configs/phase3a1_gamma.py",
            "--workdir=runs/e2e",
            "--config.batch_size=16",
            NASTY,
        ]
        assert seen["env"] == {
            "XLA_FLAGS": " ".join(gpu.DEFAULT_XLA_FLAGS),
            "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90",
            "MY_VAR": "x y",
        }
        # The pid file names the restart loop, the leader of the trainer's own process group:
        # stop signals the group.
        loop_pid = int(pid_file.read_text())
        assert seen["pgid"] == loop_pid != seen["pid"]

        again = launch("gpu.py", "run", *base, "--run_name", "e2e")
        assert again.returncode == 1 and "run e2e is already running" in again.stderr
        assert "command failed (exit status 1): bash -c" in again.stderr

        deadline = time.monotonic() + 20
        while (
            "hello from the fake trainer"
            not in (tail := launch("gpu.py", "tail", *base, "--no_follow", "--lines", "5")).stdout
        ):
            assert time.monotonic() < deadline, tail
            time.sleep(0.1)

        stop = launch("gpu.py", "stop", *base)
        assert stop.returncode == 0, stop.stderr
        assert f"sent SIGTERM to run latest (pid {loop_pid})" in stop.stdout
        wait_for(checkout / "terminated")
        assert (checkout / "logs" / "e2e.stopped").exists()  # `latest` resolved to the run
        wait_for_line(checkout / "logs" / "e2e.log", "ended: exit 0 (finished)")
    finally:
        end(pid_file)


def test_tpu_scripts_run_in_a_real_shell(capsys, tmp_path):
    """The --command strings, run by bash in a stand-in home dir, start and stop the trainer."""
    make_checkout(tmp_path / "mypt-jax")
    record = tmp_path / "mypt-jax" / "record.json"
    (run,) = dry(
        tpu.main,
        [*V4_RUN, "--run_name", "r1", "--dry_run", "--", NASTY],
        capsys,
    )
    (stop,) = dry(
        tpu.main, ["stop", "--name", "t", "--zone", "z", "--run_name", "r1", "--dry_run"], capsys
    )
    try:
        started = subprocess.run(
            ["bash", "-c", script_of(run)], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert started.returncode == 0, started.stderr
        wait_for(record)
        assert json.loads(record.read_text())["argv"][-1] == NASTY
        stopped = subprocess.run(
            ["bash", "-c", script_of(stop)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stopped.returncode == 0 and "sent SIGTERM to run r1" in stopped.stdout
        wait_for(tmp_path / "mypt-jax" / "terminated")
    finally:
        end(tmp_path / "mypt-jax" / "logs" / "r1.pid")


def test_failed_command_and_missing_gcloud_are_named(tmp_path):
    result = launch("gpu.py", "stop", "--remote_dir", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "launch/gpu.py: error: command failed (exit status 1): bash -c" in result.stderr
    empty = tmp_path / "bin"
    empty.mkdir()
    result = launch(
        "tpu.py", "delete", "--name", "t", "--zone", "z", env={**os.environ, "PATH": str(empty)}
    )
    assert result.returncode == 1
    assert "error: gcloud not found on PATH" in result.stderr
    assert "gcloud compute tpus tpu-vm delete t --zone=z" in result.stderr


# --- the README and the pins ----------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    text = (LAUNCH / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [
        shlex.split(line, comments=True)
        for line in joined.splitlines()
        if line.strip().startswith("python launch/")
    ]


def test_readme_commands_parse_and_dry_run(capsys):
    commands = readme_commands()
    scripts = {words[1] for words in commands}
    assert scripts == {"launch/tpu.py", "launch/gpu.py"}
    accelerators = {
        w.split("=")[-1] for words in commands for w in words if w.startswith("--accelerator_type")
    } | {
        words[i + 1] for words in commands for i, w in enumerate(words) if w == "--accelerator_type"
    }
    assert {"v4-8", "v5p-32"} <= accelerators
    for words in commands:
        main = tpu.main if words[1] == "launch/tpu.py" else gpu.main
        argv = [words[2], "--dry_run", *words[3:]]
        assert main(argv) == 0, (words, capsys.readouterr().err)
    capsys.readouterr()


def test_jax_version_matches_pyproject_pin():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.fullmatch(r"jax==\S+", d)]
    assert pin == f"jax=={launchlib.JAX_VERSION}"


def test_readme_trainer_flags_are_accepted_by_the_trainer(capsys):
    """The trainer command lines the README's runs start parse with the real trainer flags and
    give the documented mesh (and --distributed where the slice has more than one worker)."""
    runs = [w for w in readme_commands() if w[2] in ("run", "supervise")]
    curricula = [w for w in runs if "--phase" in w]
    runs = [w for w in runs if "--phase" not in w]
    assert len(runs) == 4 and curricula
    from mypt_jax.curriculum import pipeline

    for words in curricula:  # the pipeline's own parser takes what the launcher starts
        start = dry(tpu.main, [words[2], "--dry_run", *words[3:]], capsys)[-1]
        argv = trainer_argv_in(script_of(start))
        assert argv[1:3] == ["-m", "mypt_jax.pipeline"], words
        assert pipeline.build_parser().parse_args(argv[3:]).steps == "train"
    # (mesh_data, mesh_fsdp, mesh_tensor, batch_size, grad_accum_steps, remat, distributed): the
    # table's choice, FSDP over every device with remat "dots", is the phase configs' own.
    expected = {
        "mypt-v4": (1, -1, 1, 16, 1, "dots", False),
        "mypt-v5p": (1, -1, 1, 16, 1, "dots", True),
        "me@h100-box": (1, -1, 1, 16, 1, "dots", False),
    }
    probe = (
        "import json, sys\n"
        "from absl import flags\n"
        "import mypt_jax.train\n"
        "flags.FLAGS(sys.argv)\n"
        "c = flags.FLAGS.config\n"
        "print(json.dumps([c.mesh_data, c.mesh_fsdp, c.mesh_tensor, c.batch_size,"
        " c.grad_accum_steps, c.remat, flags.FLAGS.distributed]))"
    )
    for words in runs:
        machine = words[words.index("--name" if "--name" in words else "--host") + 1]
        main = tpu.main if words[1] == "launch/tpu.py" else gpu.main
        start = dry(main, [words[2], "--dry_run", *words[3:]], capsys)[-1]
        argv = trainer_argv_in(script_of(start))
        argv = argv[argv.index(TRAINER[0]) :]  # past gpu.py's `env XLA_FLAGS=...`
        assert argv[:3] == TRAINER, words
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv[3:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (words, result.stderr[-2000:])
        assert tuple(json.loads(result.stdout.splitlines()[-1])) == expected[machine], words


def test_tpu_run_of_the_curriculum_is_one_job_on_every_worker(capsys):
    from mypt_jax.curriculum import pipeline

    assert launchlib.CURRICULUM_PHASES == tuple(pipeline.PHASES)
    base = ["run", "--name", "t", "--zone", "z", "--run_name", "c", "--dry_run"]
    one = ["--accelerator_type", "v5p-8"]
    (command,) = dry(tpu.main, [*base, *one, "--phase", "all", "--", "--set", "max_iters=5"],
                     capsys)
    assert trainer_argv_in(script_of(command)) == [
        ".venv/bin/python", "-m", "mypt_jax.pipeline", "--phase", "all", "--steps", "train",
        "--root=.", "--set", "max_iters=5"]
    # The flag keeps a process per phase, one after another; the first takes --init_from.
    (command,) = dry(tpu.main, [*base, *one, "--phase", "all", "--process_per_phase",
                                "--init_from", "checkpoints/base"], capsys)
    argv = trainer_argv_in(script_of(command))
    assert argv[:2] == ["bash", "-c"]
    steps = [shlex.split(part) for part in argv[2].split(" && ")]
    assert [s[s.index("--phase") + 1] for s in steps] == list(pipeline.PHASES)
    assert ["--init_from=checkpoints/base" in s for s in steps] == [True, False, False, False]
    # A slice of several workers joins them and needs a root every worker mounts.
    slice_ = [*base, "--phase", "all", "--accelerator_type", "v5p-32"]
    with pytest.raises(launchlib.LaunchError, match="--shared_workdir"):
        tpu.run_commands(tpu.build_parser().parse_args(slice_), [])
    (command,) = dry(tpu.main, [*slice_, "--shared_workdir", "/mnt/fs/mypt"], capsys)
    argv = trainer_argv_in(script_of(command))
    assert "--root=/mnt/fs/mypt" in argv and "--distributed" in argv
    with pytest.raises(launchlib.LaunchError, match="--process_per_phase: only with --phase all"):
        tpu.run_commands(tpu.build_parser().parse_args([*base, *one, "--process_per_phase"]), [])
    with pytest.raises(launchlib.LaunchError, match="--dataset_dir: with --phase"):
        tpu.run_commands(tpu.build_parser().parse_args([*base, *one, "--phase", "all",
                                                        "--dataset_dir", "d"]), [])
