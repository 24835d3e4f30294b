"""What tpu.py and gpu.py share: the shell scripts a worker runs, and dry-running or running commands.

Stdlib only: the launch scripts run on a laptop that has gcloud/ssh but not necessarily jax.
Every remote action is one shell script string, built with shlex.quote, handed to `ssh` or
`gcloud ... ssh --command`; the remote login shell parses it, so any argument (a config
override with spaces or quotes) reaches the trainer unchanged.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

JAX_VERSION = "0.10.2"  # the jax pin in pyproject.toml; tests/test_launch.py keeps them equal
# The trainer's "preempted, checkpoint saved: rerun to resume" exit status (EX_TEMPFAIL). It
# mirrors mypt_jax/training/checkpoint/preemption.py, which this stdlib-only script cannot import; a test
# keeps the two equal.
PREEMPTED_EXIT_CODE = 75
DEFAULT_MAX_RESTARTS = 100  # reruns after exit 75 on one worker before the loop gives up
# The trainer's "a checkpoint's storage kept failing (retried), nothing was moved" status
# (EX_IOERR), mirroring mypt_jax/training/checkpoint/read_faults.py. A few reruns, spaced out,
# outlast a storage outage; a storage that stays down is for a person to look at.
STORAGE_EXIT_CODE = 74
STORAGE_RERUNS = 3
STORAGE_PAUSE_S = 60
PAUSE_ENV = "MYPT_JAX_STORAGE_PAUSE_S"  # the pause, where the loop's environment sets it (tests)
DEFAULT_CONFIG = "configs/phase3a1_gamma.py"
DEFAULT_REMOTE_DIR = "mypt-jax"  # relative paths on a worker are relative to its login dir ($HOME)
DEFAULT_PYTHON = "python3.11"  # jax 0.10.2 needs >= 3.11; TPU VM images ship Ubuntu 22.04's 3.10
VENV_PYTHON = ".venv/bin/python"  # relative to the checkout on the worker
TARBALL = "mypt-jax-src.tar.gz"  # lands in the worker's login dir, removed after unpacking
# Relative to the checkout: <run>.log, <run>.pid (the restart loop's), <run>.rc (the run's
# final exit status, written as the loop ends), <run>.stopped (written by `stop`), latest.log,
# latest.pid.
LOG_DIR = "logs"
LATEST = "latest"
DATA_DEST = "data/sft_ready"  # setup --data copies here: the configs' dataset_dir layout
INIT_DEST = "checkpoints"  # setup --init_from copies here by default (the alpha base model's place)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Command = list[str]
q = shlex.quote


class LaunchError(Exception):
    """A failure the user can act on; main() prints it as one `error:` line."""


# ---------------------------------------------------------------------------------------------
# Where commands go: a TPU VM's workers, an ssh host, or this machine.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TpuTarget:
    name: str
    zone: str
    project: str | None = None
    worker: str = "all"  # gcloud's --worker: "all", an index, a list or a range

    @classmethod
    def from_args(cls, args: argparse.Namespace, worker: str = "all") -> TpuTarget:
        """The VM that tpu.py's --name, --zone and --project name."""
        return cls(args.name, args.zone, args.project, worker)

    def _location(self) -> Command:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def _where(self) -> Command:
        return [*self._location(), f"--worker={self.worker}"]

    def vm(self, verb: str, *flags: str) -> Command:
        """`gcloud ... tpu-vm VERB NAME` (create, delete, describe): the VM itself, so no --worker."""
        return ["gcloud", "compute", "tpus", "tpu-vm", verb, self.name, *self._location(), *flags]

    def shell(self, script: str) -> Command:
        return [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            self.name,
            *self._where(),
            f"--command={script}",
        ]

    def upload(self, local: str, remote: str, recursive: bool = False) -> Command:
        recurse = ["--recurse"] if recursive else []
        return [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "scp",
            *recurse,
            local,
            f"{self.name}:{remote}",
            *self._where(),
        ]


@dataclass(frozen=True)
class SshTarget:
    host: str  # user@host, or a Host alias from ~/.ssh/config

    def shell(self, script: str) -> Command:
        return ["ssh", self.host, script]

    def upload(self, local: str, remote: str, recursive: bool = False) -> Command:
        return ["scp", *(["-r"] if recursive else []), local, f"{self.host}:{remote}"]


@dataclass(frozen=True)
class LocalTarget:
    def shell(self, script: str) -> Command:
        return ["bash", "-c", script]

    def upload(self, local: str, remote: str, recursive: bool = False) -> Command:
        raise LaunchError("nothing to upload on this machine")  # callers use paths in place


Target = TpuTarget | SshTarget | LocalTarget


# ---------------------------------------------------------------------------------------------
# Shell scripts run on a worker. Each is one line: dry runs print one command per line.
# ---------------------------------------------------------------------------------------------


def unpack_script(remote_dir: str) -> str:
    return f"mkdir -p {q(remote_dir)} && tar -xzf {TARBALL} -C {q(remote_dir)} && rm -f {TARBALL}"


def git_checkout_script(remote_dir: str, repo_url: str, ref: str) -> str:
    d = q(remote_dir)
    return (
        f"if [ -d {d}/.git ]; then git -C {d} fetch -q origin; "
        f"else git clone -q {q(repo_url)} {d}; fi && git -C {d} checkout -q --detach {q(ref)}"
    )


def install_script(remote_dir: str, python: str, jax_extra: str) -> str:
    """A .venv (python >= 3.11, from apt when missing), then the project and jax[extra] into it."""
    py = q(python)
    # DPkg::Lock::Timeout: a fresh VM's unattended-upgrades holds the apt lock for minutes.
    apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
    ensure_python = (
        f"{{ {py} -c {q('import ensurepip, venv')} 2>/dev/null || "
        f"{{ {apt} update -q && {apt} install -y -q {py} {q(python + '-venv')}; }}; }}"
    )
    # An existing .venv is kept (it may be the user's own on this machine).
    make_venv = f"{{ [ -x {VENV_PYTHON} ] || {{ {ensure_python} && {py} -m venv .venv; }}; }}"
    pip = f"{VENV_PYTHON} -m pip install -q"
    return (
        f"cd {q(remote_dir)} && {make_venv} && "
        f"{pip} --upgrade pip && {pip} -e . {q(f'jax[{jax_extra}]=={JAX_VERSION}')}"
    )


def gcs_copy_script(remote_dir: str, uri: str, subdir: str) -> str:
    dest = q(posixpath.join(remote_dir, subdir))
    return f"mkdir -p {dest} && gsutil -m cp -r {q(uri.rstrip('/'))} {dest}/"


def trainer_argv(
    config: str,
    workdir: str,
    dataset_dir: str | None,
    init_from: str | None,
    extra: Sequence[str],
    distributed: bool = False,
) -> Command:
    """The trainer command line; `extra` comes last, so an override there wins."""
    argv = [VENV_PYTHON, "-m", "mypt_jax.train", f"--config={config}", f"--workdir={workdir}"]
    if distributed and "--distributed" not in extra:
        argv.append("--distributed")
    if dataset_dir:
        argv.append(f"--config.dataset_dir={dataset_dir}")
    if init_from:
        argv.append(f"--config.init_from={init_from}")
    return argv + list(extra)


# The curriculum's phases in order, mirroring mypt_jax/curriculum/phases.py (a test keeps them
# equal): `run --phase all --process_per_phase` starts one pipeline process per phase.
CURRICULUM_PHASES = ("3a1_alpha", "3a1_beta", "3a1_gamma", "3a2")


def pipeline_argv(
    phase: str,
    root: str,
    init_from: str | None,
    extra: Sequence[str],
    distributed: bool = False,
    process_per_phase: bool = False,
) -> Command:
    """The curriculum's train steps (the data prepared beforehand) as one job: `phase` "all"
    runs every phase in one process, each starting from the previous one's weights on the
    devices. `process_per_phase`: a process per phase, one after another, each reading the
    previous phase's weights back from its run directory. `extra` comes last (pipeline
    flags, `--set field=value`)."""
    def one(name: str, first: bool) -> list[str]:
        argv = [VENV_PYTHON, "-m", "mypt_jax.pipeline", "--phase", name, "--steps", "train",
                f"--root={root}"]
        if distributed:
            argv.append("--distributed")
        if init_from and first:
            argv.append(f"--init_from={init_from}")
        return argv + list(extra)

    if not process_per_phase or phase != "all":
        return one(phase, True)
    chain = " && ".join(shlex.join(one(name, i == 0)) for i, name in enumerate(CURRICULUM_PHASES))
    return ["bash", "-c", chain]


def restart_loop_script(run_name: str, command: str, max_restarts: int) -> str:
    """Runs `command` again while it exits 75 and nobody stopped the run, or exits 74 (up to
    STORAGE_RERUNS times, STORAGE_PAUSE_S apart); then writes <run>.rc.

    The TERM trap keeps this shell alive while the trainer saves its checkpoint (bash runs a
    trap only once the foreground command has exited), and tells it the signal was meant for the
    whole run: `stop` signals the process group and a shutting-down host signals everything, so
    neither is a reason to restart. `stop` also writes <run>.stopped first, which covers a
    signal that reached the trainer alone (--signal INT: a background shell cannot trap it).
    """
    rc, stopped = f"{LOG_DIR}/{run_name}.rc", f"{LOG_DIR}/{run_name}.stopped"
    say = f'echo "launch: $(date -u +%FT%TZ) run {run_name}'
    rerun_75 = (f"n=$((n + 1)); {say} exited {PREEMPTED_EXIT_CODE} (preempted, checkpoint "
                f'saved): restart $n of {int(max_restarts)}"; continue')
    rerun_74 = (f"io=$((io + 1)); {say} exited {STORAGE_EXIT_CODE} (checkpoint storage "
                f'unavailable): rerun $io of {STORAGE_RERUNS} in ${{pause}}s"; sleep $pause; '
                "continue")
    return (
        f'signalled=0; trap "signalled=1" TERM; n=0; io=0; '
        f"pause=${{{PAUSE_ENV}:-{STORAGE_PAUSE_S}}}; while :; do {command} ; rc=$?; "
        f"if [ $rc -ne {PREEMPTED_EXIT_CODE} ] && [ $rc -ne {STORAGE_EXIT_CODE} ]; "
        "then why=finished; "
        f'elif [ $signalled = 1 ] || [ -e {stopped} ]; then why="stopped, not restarted"; '
        f"elif [ $rc -eq {STORAGE_EXIT_CODE} ]; then "
        f'if [ $io -ge {STORAGE_RERUNS} ]; then why="{STORAGE_RERUNS} reruns, giving up"; '
        f"else {rerun_74}; fi; "
        f'elif [ $n -ge {int(max_restarts)} ]; then why="{int(max_restarts)} restarts, giving up"; '
        f"else {rerun_75}; fi; "
        f'echo $rc > {rc}.tmp; mv -f {rc}.tmp {rc}; {say} ended: exit $rc ($why)"; exit $rc; done'
    )


def _running(run_name: str) -> str:
    """A shell test: the run's restart loop is alive.

    An <run>.rc means the loop has ended, whatever `kill -0` says: under a PID 1 that does
    not reap orphans (a container without an init), the loop lingers as a zombie.
    """
    pid = f"{LOG_DIR}/{run_name}.pid"
    return f'[ ! -e {LOG_DIR}/{run_name}.rc ] && [ -e {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'


def start_script(
    remote_dir: str,
    run_name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    max_restarts: int = DEFAULT_MAX_RESTARTS,
) -> str:
    """Starts `argv` in a restart loop, detached (own session: stop signals its process group)."""
    log, pid = f"{LOG_DIR}/{run_name}.log", f"{LOG_DIR}/{run_name}.pid"
    env_argv = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    loop = restart_loop_script(run_name, shlex.join([*env_argv, *argv]), max_restarts)
    return (
        f"set -e; cd {q(remote_dir)}; mkdir -p {LOG_DIR}; "
        f"if {_running(run_name)}; then "
        f'echo "run {run_name} is already running on $(hostname) (pid $(cat {pid}))" >&2; exit 1; fi; '
        f"rm -f {LOG_DIR}/{run_name}.rc {LOG_DIR}/{run_name}.stopped; "
        # Appended: a rerun that resumes the run keeps the log of what came before.
        f"nohup setsid bash -c {q(loop)} >> {log} 2>&1 < /dev/null & echo $! > {pid}; "
        f"ln -sfn {run_name}.log {LOG_DIR}/{LATEST}.log; ln -sfn {run_name}.pid {LOG_DIR}/{LATEST}.pid; "
        f'echo "started run {run_name} on $(hostname): pid $(cat {pid}), log $(pwd)/{log}"'
    )


def stop_script(remote_dir: str, run_name: str, signal: str, pkill: bool) -> str:
    """Marks the run stopped, then signals its process group; with pkill, also any `-m mypt_jax.train`.

    The trainer saves at the step in flight on TERM or INT and exits 75; the marker keeps the
    restart loop from rerunning it. It sits beside the pid file the link resolves to, so
    `--run_name latest` marks the newest run.
    """
    pid = f"{LOG_DIR}/{run_name}.pid"
    by_pid = (
        f'if [ ! -e {pid} ]; then echo "no {pid} on $(hostname)" >&2; '
        f'else m=$(readlink -f {pid}); : > "${{m%.pid}}.stopped"; '
        f'p=$(cat {pid}); if kill -0 "$p" 2>/dev/null; then '
        f'kill -{signal} -- "-$p" 2>/dev/null || kill -{signal} "$p"; '
        f'echo "sent SIG{signal} to run {run_name} (pid $p) on $(hostname)"; '
        f'else echo "run {run_name} (pid $p) is not running on $(hostname)"; fi; fi'
    )
    script = f"cd {q(remote_dir)} || exit 1; {by_pid}"
    if pkill:
        # "[.]" keeps the pattern from matching this very shell's command line.
        script += f"; pkill -{signal} -f -- {q('-m mypt_jax[.]train')} || true"
    return script


def status_script(remote_dir: str, run_name: str) -> str:
    """Prints how the run stands on this worker: running, stopped, `exit N`, or none (not started,
    or killed with its loop)."""
    rc = f"{LOG_DIR}/{run_name}.rc"
    return (
        f"cd {q(remote_dir)} 2>/dev/null || {{ echo none; exit 0; }}; "
        f"if {_running(run_name)}; then echo running; "
        f"elif [ -e {LOG_DIR}/{run_name}.stopped ]; then echo stopped; "
        f'elif [ -e {rc} ]; then echo "exit $(cat {rc})"; else echo none; fi'
    )


def default_workdir(run_name: str) -> str:
    return f"runs/{run_name}"  # relative to the checkout: on each worker's own disk


def run_command(
    target,
    remote_dir: str,
    args,
    extra: Sequence[str],
    env: Mapping[str, str],
    *,
    workdir: str | None = None,
    distributed: bool = False,
) -> Command:
    """`run`: start the trainer in the background on `target` (every worker of a TPU slice)."""
    if args.run_name == LATEST:
        raise LaunchError(f"--run_name {LATEST!r} is reserved (it names the newest run)")
    if args.max_restarts < 0:
        raise LaunchError(f"--max_restarts {args.max_restarts}: expected 0 or more")
    if getattr(args, "phase", None):  # the curriculum: `workdir` is the pipeline's root
        argv = pipeline_argv(args.phase, workdir or ".", args.init_from, extra, distributed,
                             args.process_per_phase)
    else:
        workdir = workdir or args.workdir or default_workdir(args.run_name)
        argv = trainer_argv(args.config, workdir, args.dataset_dir, args.init_from, extra,
                            distributed)
    return target.shell(start_script(remote_dir, args.run_name, argv, env, args.max_restarts))


def tail_script(remote_dir: str, run_name: str, lines: int, follow: bool) -> str:
    log = q(posixpath.join(remote_dir, LOG_DIR, f"{run_name}.log"))
    return f"tail -n {int(lines)} {'-F ' if follow else ''}{log}"


# ---------------------------------------------------------------------------------------------
# Command lists for the subcommands both scripts share.
# ---------------------------------------------------------------------------------------------


def tarball_path(tag: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", tag)
    return os.path.join(tempfile.gettempdir(), f"mypt-jax-src-{safe}.tar.gz")


def archive_command(ref: str, output: str) -> Command:
    # git archive ships the committed tree at `ref`: uncommitted edits are not included.
    return ["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", f"--output={output}", ref]


def setup_commands(
    target: Target,
    remote_dir: str,
    *,
    repo_url: str | None,
    ref: str | None,
    tarball: str,
    python: str,
    jax_extra: str,
    data: str | None,
    init_from: str | None,
    init_dest: str = INIT_DEST,
    install: bool = True,
) -> tuple[list[Command], list[str]]:
    """Returns (commands, notes): the source, the venv, then data/checkpoint copies.

    Copies land where configs/phase3a*.py look by default (data/sft_ready/<name>,
    checkpoints/<name> or, with init_dest="runs", a previous run's workdir runs/<name>).
    """
    commands: list[Command] = []
    notes: list[str] = []
    if repo_url:
        commands.append(
            target.shell(git_checkout_script(remote_dir, repo_url, ref or "origin/HEAD"))
        )
    elif not isinstance(target, LocalTarget):
        commands.append(archive_command(ref or "HEAD", tarball))
        commands.append(target.upload(tarball, TARBALL))
        commands.append(target.shell(unpack_script(remote_dir)))
    if install:
        commands.append(target.shell(install_script(remote_dir, python, jax_extra)))
    for uri, subdir, flag, field in (
        (data, DATA_DEST, "data", "dataset_dir"),
        (init_from, init_dest, "init_from", "init_from"),
    ):
        if not uri:
            continue
        name = posixpath.basename(uri.rstrip("/"))
        if uri.startswith("gs://"):
            commands.append(target.shell(gcs_copy_script(remote_dir, uri, subdir)))
        elif isinstance(target, LocalTarget):
            notes.append(f"{uri} is on this machine already: run with --{field}={uri}")
            continue
        else:
            if not os.path.exists(uri):
                raise LaunchError(
                    f"--{flag} {uri}: no such local path (give a gs:// URI or an existing path)"
                )
            commands.append(target.shell(f"mkdir -p {q(posixpath.join(remote_dir, subdir))}"))
            commands.append(
                target.upload(
                    uri.rstrip("/"),
                    posixpath.join(remote_dir, subdir) + "/",
                    recursive=os.path.isdir(uri),
                )
            )
        notes.append(f"copied {uri}: run with --{field}={subdir}/{name}")
    return commands, notes


# ---------------------------------------------------------------------------------------------
# Argument helpers and the runner.
# ---------------------------------------------------------------------------------------------


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits at the first `--`: what follows goes to the trainer verbatim."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def run_name_arg(value: str) -> str:
    """argparse type: the run name is part of file names on every worker."""
    if not _RUN_NAME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME_RE.fullmatch(key):
            raise LaunchError(f"--env {pair!r}: expected NAME=VALUE")
        env[key] = value
    return env


def execute(commands: Sequence[Command], dry_run: bool) -> None:
    """Dry run: print each command (shlex.join, one per line). Else run each, stopping at a failure."""
    if dry_run:
        for command in commands:
            print(shlex.join(command))
        return
    for command in commands:
        if shutil.which(command[0]) is None:
            raise LaunchError(
                f"{command[0]} not found on PATH; it is needed for: {shlex.join(command)}"
            )
    for command in commands:
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        try:
            subprocess.run(command, check=True)
        except subprocess.CalledProcessError as e:
            raise LaunchError(
                f"command failed (exit status {e.returncode}): {shlex.join(command)}"
            ) from None


def report(error: LaunchError, prog: str) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 1


def run_cli(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    builders: Mapping[str, Callable[..., list[Command]]],
    takes_trainer_args: Sequence[str] = ("run",),
) -> int:
    """The shared `main` of the launch scripts: parse, build the subcommand's commands, run.

    `builders[sub](args)` builds a subcommand's commands; those in `takes_trainer_args` also
    get the trainer arguments that followed `--`. A builder that runs its own commands (tpu.py
    supervise) returns none.
    """
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    passes = args.subcommand in takes_trainer_args
    if extra and not passes:
        names = " and ".join(f"`{name}`" for name in takes_trainer_args)
        verb = "takes" if len(takes_trainer_args) == 1 else "take"
        parser.error(
            f"arguments after -- go to the trainer; only {names} {verb} them (got {extra})"
        )
    try:
        build = builders[args.subcommand]
        commands = build(args, extra) if passes else build(args)
        execute(commands, args.dry_run)
    except LaunchError as e:
        return report(e, parser.prog)
    except KeyboardInterrupt:
        return 130
    return 0
