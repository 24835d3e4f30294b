"""Cloud TPU VMs (one host or a pod slice): create, set up, run, tail, stop, delete, supervise.

  python launch/tpu.py create --name my-tpu --zone us-central2-b --accelerator_type v4-8
  python launch/tpu.py setup  --name my-tpu --zone us-central2-b --data gs://bucket/phase3a1
  python launch/tpu.py run    --name my-tpu --zone us-central2-b --accelerator_type v4-8 \
      --run_name a1 -- --config.batch_size=16
  python launch/tpu.py tail   --name my-tpu --zone us-central2-b
  python launch/tpu.py stop   --name my-tpu --zone us-central2-b
  python launch/tpu.py delete --name my-tpu --zone us-central2-b
  python launch/tpu.py supervise --name my-tpu --zone us-central2-b --accelerator_type v4-8 \
      --spot --data gs://bucket/phase3a1 --run_name a1 --workdir gs://bucket/runs/a1

`supervise` is create + setup + run that re-creates a preempted VM and reruns the same command
until the run ends. Every subcommand takes --dry_run: print the commands (one per line), run
nothing. See launch/README.md for per-topology commands and config overrides.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import sys
import time
from collections.abc import Sequence

import launchlib as ll
import supervise as sv

# Runtime (software) version per TPU generation, from Cloud TPU's "TPU software versions" page.
RUNTIME_BY_GENERATION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# What the number in an accelerator type counts per worker (host) of a multi-worker slice:
# TensorCores on v2-v4 and v5p (4 chips, 8 cores: v5p-32 is 4 workers), chips on v5e and v6e
# (4 chips: v5litepod-16 is 4 workers). Up to 8, every generation is one worker.
PER_WORKER = {"v2": 8, "v3": 8, "v4": 8, "v5p": 8, "v5litepod": 4, "v6e": 4}
ONE_WORKER_MAX = 8
_ACCELERATOR_RE = re.compile(r"(v[0-9][a-z0-9]*)-([0-9]+)")


def default_runtime(accelerator_type: str) -> str | None:
    match = _ACCELERATOR_RE.fullmatch(accelerator_type)
    return RUNTIME_BY_GENERATION.get(match.group(1)) if match else None


def worker_count(accelerator_type: str) -> int | None:
    """How many workers (hosts, trainer processes) the slice has; None for an unknown generation."""
    match = _ACCELERATOR_RE.fullmatch(accelerator_type)
    if not match or match.group(1) not in PER_WORKER:
        return None
    size = int(match.group(2))
    return 1 if size <= ONE_WORKER_MAX else size // PER_WORKER[match.group(1)]


def create_commands(args: argparse.Namespace) -> list[ll.Command]:
    if not _ACCELERATOR_RE.fullmatch(args.accelerator_type):
        raise ll.LaunchError(
            f"--accelerator_type {args.accelerator_type!r}: expected a name like "
            "v4-8, v5p-32 or v5litepod-8"
        )
    version = args.version or default_runtime(args.accelerator_type)
    if version is None:
        raise ll.LaunchError(
            f"no default runtime for {args.accelerator_type!r}: pass --version "
            f"(known generations: {', '.join(RUNTIME_BY_GENERATION)})"
        )
    command = ll.TpuTarget.from_args(args).vm(
        "create", f"--accelerator-type={args.accelerator_type}", f"--version={version}"
    )
    if args.spot:
        command.append("--spot")
    if args.preemptible:
        command.append("--preemptible")
    return [command]


def setup_commands(args: argparse.Namespace) -> list[ll.Command]:
    commands, notes = ll.setup_commands(
        ll.TpuTarget.from_args(args),
        args.remote_dir,
        repo_url=args.repo_url,
        ref=args.ref,
        tarball=ll.tarball_path(args.name),
        python=args.python,
        jax_extra="tpu",
        data=args.data,
        init_from=args.init_from,
        init_dest=args.init_dest,
        install=not args.skip_install,
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return commands


def slice_workers(args: argparse.Namespace) -> int:
    """The slice's worker count from --workers or --accelerator_type; refuses to guess."""
    known = worker_count(args.accelerator_type) if args.accelerator_type else None
    if args.workers is not None:
        if args.workers < 1:
            raise ll.LaunchError(f"--workers {args.workers}: expected 1 or more")
        if known is not None and known != args.workers:
            raise ll.LaunchError(
                f"--workers {args.workers}: a {args.accelerator_type} slice has {known} workers"
            )
        return args.workers
    if known is not None:
        return known
    if args.accelerator_type:
        raise ll.LaunchError(
            f"--accelerator_type {args.accelerator_type!r}: cannot tell how many workers it has "
            f"(known generations: {', '.join(PER_WORKER)}); pass --workers N"
        )
    raise ll.LaunchError(
        "pass --accelerator_type (as given to create) or --workers N: a slice with more than "
        "one worker needs the trainer's --distributed and a workdir every worker shares"
    )


def checked_workdir(args: argparse.Namespace, workers: int, recreated: bool = False) -> str:
    """The trainer's workdir, refused where the workers (or a re-created VM) would not share it."""
    if args.shared_workdir:
        if not posixpath.isabs(args.shared_workdir):
            raise ll.LaunchError(
                f"--shared_workdir {args.shared_workdir}: expected an absolute path on a "
                "filesystem every worker mounts (NFS, Filestore); a relative one is in each "
                "worker's own checkout"
            )
        return args.shared_workdir
    workdir = args.workdir or ll.default_workdir(args.run_name)
    if workdir.startswith("gs://"):
        return workdir
    if workers > 1:
        why = f"the {workers} workers of this slice write one checkpoint together"
    elif recreated:
        why = "a re-created VM starts from an empty disk"
    else:
        return workdir
    given = f"--workdir {workdir}" if args.workdir else f"the default workdir {workdir}"
    raise ll.LaunchError(
        f"{given} is on each worker's own disk, but {why}: pass --workdir gs://BUCKET/PATH, "
        "or --shared_workdir /PATH on a filesystem every worker mounts (NFS, Filestore)"
    )


def curriculum_root(args: argparse.Namespace, workers: int) -> str:
    """Where `run --phase` keeps the pipeline's data/, runs/ and logs/: the checkout, or a
    filesystem every worker mounts, which a slice of several workers needs."""
    if args.dataset_dir or args.workdir:
        flag = "--dataset_dir" if args.dataset_dir else "--workdir"
        raise ll.LaunchError(f"{flag}: with --phase the pipeline names each phase's dataset "
                             "and run directory under its root (--shared_workdir, or the "
                             "checkout); set fields with `-- --set field=value`")
    if args.shared_workdir:
        return checked_workdir(args, workers)
    if workers > 1:
        raise ll.LaunchError(
            f"--phase on {workers} workers: they write each phase's checkpoints together, so "
            "the pipeline's root must be a filesystem every worker mounts: pass "
            "--shared_workdir /PATH (NFS, Filestore) with the prepared data/ under it")
    return "."


def run_commands(
    args: argparse.Namespace, extra: Sequence[str], recreated: bool = False
) -> list[ll.Command]:
    workers = slice_workers(args)
    if getattr(args, "process_per_phase", False) and args.phase != "all":
        raise ll.LaunchError("--process_per_phase: only with --phase all (a process per phase "
                             "of the whole curriculum)")
    if getattr(args, "phase", None):
        workdir = curriculum_root(args, workers)
    else:
        workdir = checked_workdir(args, workers, recreated)
    command = ll.run_command(
        ll.TpuTarget.from_args(args),
        args.remote_dir,
        args,
        extra,
        ll.parse_env(args.env),
        workdir=workdir,
        distributed=workers > 1,  # one trainer process per worker, joined by jax.distributed
    )
    return [command]


def tail_commands(args: argparse.Namespace) -> list[ll.Command]:
    script = ll.tail_script(args.remote_dir, args.run_name, args.lines, not args.no_follow)
    return [ll.TpuTarget.from_args(args, worker=str(args.worker)).shell(script)]


def stop_commands(args: argparse.Namespace) -> list[ll.Command]:
    script = ll.stop_script(args.remote_dir, args.run_name, args.signal, args.pkill)
    return [ll.TpuTarget.from_args(args).shell(script)]


def delete_commands(args: argparse.Namespace) -> list[ll.Command]:
    return [ll.TpuTarget.from_args(args).vm("delete", *(["--quiet"] if args.yes else []))]


def supervise_commands(args: argparse.Namespace, extra: Sequence[str]) -> list[ll.Command]:
    # supervise.py makes its steps of this file's builders; they are handed in because this file
    # runs as __main__, where supervise.py importing it would load a second copy.
    build = sv.Builders(create_commands, setup_commands, run_commands, delete_commands)
    return sv.supervise_commands(args, extra, build)


def _create_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--accelerator_type", required=True, help="v4-8, v5p-32, v5litepod-8, ...")
    p.add_argument("--version", help="runtime version (default: the one for the generation)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="Spot VM (cheaper, can be reclaimed)")
    kind.add_argument("--preemptible", action="store_true")
    return p


def _setup_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--repo_url",
        help="git clone this URL on each worker (default: ship a `git archive` of this checkout)",
    )
    p.add_argument(
        "--ref",
        help="commit/tag to ship (default HEAD) or check out (default "
        "origin/HEAD; a branch as origin/NAME)",
    )
    p.add_argument(
        "--python",
        default=ll.DEFAULT_PYTHON,
        help="interpreter for the venv, >= 3.11 "
        "(installed with apt when missing; default: %(default)s)",
    )
    p.add_argument(
        "--data", help="dataset dir to copy to every worker's data/sft_ready/ (gs:// or local)"
    )
    p.add_argument(
        "--init_from", help="checkpoint or run dir to copy to every worker (gs:// or local)"
    )
    p.add_argument(
        "--init_dest",
        default=ll.INIT_DEST,
        help="where --init_from goes: checkpoints (a base model) or runs (a previous run)",
    )
    p.add_argument("--skip_install", action="store_true", help="only ship code / copy data")
    return p


def _run_flags() -> argparse.ArgumentParser:
    """run's flags but --run_name, --init_from and --accelerator_type, which supervise shares."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", default=ll.DEFAULT_CONFIG, help="default: %(default)s")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workdir",
        help="default runs/<run_name> on each worker; a slice of more than one worker "
        "needs a gs:// path (or --shared_workdir)",
    )
    where.add_argument(
        "--shared_workdir",
        metavar="PATH",
        help="workdir on a filesystem every worker mounts (an absolute NFS/Filestore path)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="workers in the slice, for an --accelerator_type this script does not know",
    )
    p.add_argument("--dataset_dir", help="sets --config.dataset_dir")
    p.add_argument(
        "--phase",
        choices=[*ll.CURRICULUM_PHASES, "all"],
        help="run the curriculum's train steps (`python -m mypt_jax.pipeline --steps train`, the "
        "data prepared under the root beforehand) instead of one --config: `all` is the four "
        "phases as one job, each starting from the previous one's weights on the devices",
    )
    p.add_argument(
        "--process_per_phase",
        action="store_true",
        help="with --phase all: a process per phase, each reading the previous phase's weights "
        "back from its run directory (the path before the one-job curriculum)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the trainer (repeatable)",
    )
    p.add_argument(
        "--max_restarts",
        type=int,
        default=ll.DEFAULT_MAX_RESTARTS,
        help=f"reruns on a worker after exit {ll.PREEMPTED_EXIT_CODE} (preempted, checkpoint "
        "saved) before giving up (default: %(default)s)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM name")
    common.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-east5-a (v5p)")
    common.add_argument("--project", help="GCP project (default: gcloud's core/project)")
    common.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--remote_dir",
        default=ll.DEFAULT_REMOTE_DIR,
        help="checkout on each worker, relative to its home (default: %(default)s)",
    )
    create_flags, setup_flags, run_flags = _create_flags(), _setup_flags(), _run_flags()

    parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    sub.add_parser("create", parents=[common, create_flags], help="create the TPU VM / pod slice")
    sub.add_parser(
        "setup", parents=[common, remote, setup_flags], help="code + venv (+ data) on all workers"
    )

    p = sub.add_parser(
        "run",
        parents=[common, remote, run_flags],
        help="start the trainer on all workers; trainer flags go after --",
    )
    p.add_argument(
        "--run_name",
        type=ll.run_name_arg,
        default=time.strftime("run-%Y%m%d-%H%M%S"),
        help="names the log and pid files (default: run-<time>)",
    )
    p.add_argument(
        "--accelerator_type",
        help="as given to create: tells how many workers the slice has "
        "(more than one: the trainer gets --distributed)",
    )
    p.add_argument("--init_from", help="sets --config.init_from")

    p = sub.add_parser("tail", parents=[common, remote], help="follow one worker's log")
    p.add_argument("--run_name", type=ll.run_name_arg, default=ll.LATEST)
    p.add_argument("--worker", type=int, default=0, help="worker index (default: 0)")
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--no_follow", action="store_true", help="print the last lines and exit")

    p = sub.add_parser(
        "stop",
        parents=[common, remote],
        help="mark the run stopped and signal it on all workers (it saves, and is not restarted)",
    )
    p.add_argument("--run_name", type=ll.run_name_arg, default=ll.LATEST)
    p.add_argument("--signal", default="TERM", choices=["TERM", "INT", "KILL"])
    p.add_argument(
        "--pkill",
        action="store_true",
        help="also signal every `-m mypt_jax.train` process (lost pid files)",
    )

    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM")
    p.add_argument("--yes", action="store_true", help="no confirmation prompt (gcloud --quiet)")

    p = sub.add_parser(
        "supervise",
        parents=[common, remote, create_flags, setup_flags, run_flags],
        help="create + setup + run, re-created after a preemption, until the run ends; "
        "trainer flags go after --",
    )
    p.add_argument(
        "--run_name",
        type=ll.run_name_arg,
        required=True,
        help="the run to start and watch (the same one each time: it resumes)",
    )
    p.add_argument(
        "--poll_s", type=float, default=60.0, help="seconds between looks (default: %(default)s)"
    )
    p.add_argument(
        "--max_relaunches",
        type=int,
        default=20,
        help="times to start the run again (on a re-created VM, or after an exit "
        f"{ll.PREEMPTED_EXIT_CODE} not restarted on the worker) before giving up "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max_failures",
        type=int,
        default=60,
        help="give up after this many rounds in a row in which gcloud failed (no capacity, "
        "ssh down); 0: never (default: %(default)s)",
    )
    p.add_argument(
        "--state",
        default="PREEMPTED",
        choices=list(sv.STEP_FOR_STATE),
        help="with --dry_run: the VM state to print one round's commands for (READY: after "
        "an exit 75 the worker did not rerun; default: %(default)s)",
    )
    return parser


BUILDERS = {
    "create": create_commands,
    "setup": setup_commands,
    "run": run_commands,
    "tail": tail_commands,
    "stop": stop_commands,
    "delete": delete_commands,
    "supervise": supervise_commands,
}


def main(argv: Sequence[str] | None = None) -> int:
    return ll.run_cli(argv, build_parser(), BUILDERS, takes_trainer_args=("run", "supervise"))


if __name__ == "__main__":
    sys.exit(main())
