"""Cloud TPU VMs (one host or a pod slice): create, set up, run, tail, stop, delete.

  python launch/tpu.py create --name my-tpu --zone us-central2-b --accelerator_type v4-8
  python launch/tpu.py setup  --name my-tpu --zone us-central2-b --data gs://bucket/phase3a1
  python launch/tpu.py run    --name my-tpu --zone us-central2-b --run_name a1 -- --config.batch_size=16
  python launch/tpu.py tail   --name my-tpu --zone us-central2-b
  python launch/tpu.py stop   --name my-tpu --zone us-central2-b
  python launch/tpu.py delete --name my-tpu --zone us-central2-b

Every subcommand takes --dry_run: print the commands (one per line), run nothing.
See launch/README.md for per-topology commands and config overrides.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

import launchlib as ll

# Runtime (software) version per TPU generation, from Cloud TPU's "TPU software versions" page.
RUNTIME_BY_GENERATION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
_ACCELERATOR_RE = re.compile(r"(v[0-9][a-z0-9]*)-([0-9]+)")


def default_runtime(accelerator_type: str) -> str | None:
    match = _ACCELERATOR_RE.fullmatch(accelerator_type)
    return RUNTIME_BY_GENERATION.get(match.group(1)) if match else None


def _gcloud_where(args: argparse.Namespace) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _target(args: argparse.Namespace, worker: str = "all") -> ll.TpuTarget:
    return ll.TpuTarget(args.name, args.zone, args.project, worker)


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
    command = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        args.name,
        *_gcloud_where(args),
        f"--accelerator-type={args.accelerator_type}",
        f"--version={version}",
    ]
    if args.spot:
        command.append("--spot")
    if args.preemptible:
        command.append("--preemptible")
    return [command]


def setup_commands(args: argparse.Namespace) -> list[ll.Command]:
    commands, notes = ll.setup_commands(
        _target(args),
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


def run_commands(args: argparse.Namespace, extra: Sequence[str]) -> list[ll.Command]:
    return [ll.run_command(_target(args), args.remote_dir, args, extra, ll.parse_env(args.env))]


def tail_commands(args: argparse.Namespace) -> list[ll.Command]:
    script = ll.tail_script(args.remote_dir, args.run_name, args.lines, not args.no_follow)
    return [_target(args, worker=str(args.worker)).shell(script)]


def stop_commands(args: argparse.Namespace) -> list[ll.Command]:
    return [
        _target(args).shell(ll.stop_script(args.remote_dir, args.run_name, args.signal, args.pkill))
    ]


def delete_commands(args: argparse.Namespace) -> list[ll.Command]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_gcloud_where(args)]
    return [command + (["--quiet"] if args.yes else [])]


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

    parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("create", parents=[common], help="create the TPU VM / pod slice")
    p.add_argument("--accelerator_type", required=True, help="v4-8, v5p-32, v5litepod-8, ...")
    p.add_argument("--version", help="runtime version (default: the one for the generation)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="Spot VM (cheaper, can be reclaimed)")
    kind.add_argument("--preemptible", action="store_true")

    p = sub.add_parser(
        "setup", parents=[common, remote], help="code + venv (+ data) on all workers"
    )
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

    p = sub.add_parser(
        "run",
        parents=[common, remote],
        help="start the trainer on all workers; trainer flags go after --",
    )
    p.add_argument(
        "--run_name",
        type=ll.run_name_arg,
        default=time.strftime("run-%Y%m%d-%H%M%S"),
        help="names the log and pid files (default: run-<time>)",
    )
    p.add_argument("--config", default=ll.DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument(
        "--workdir",
        help="default runs/<run_name> on each worker; multi-host "
        "slices need a gs:// path every worker sees",
    )
    p.add_argument("--dataset_dir", help="sets --config.dataset_dir")
    p.add_argument("--init_from", help="sets --config.init_from")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the trainer (repeatable)",
    )

    p = sub.add_parser("tail", parents=[common, remote], help="follow one worker's log")
    p.add_argument("--run_name", type=ll.run_name_arg, default=ll.LATEST)
    p.add_argument("--worker", type=int, default=0, help="worker index (default: 0)")
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--no_follow", action="store_true", help="print the last lines and exit")

    p = sub.add_parser("stop", parents=[common, remote], help="signal the run on all workers")
    p.add_argument("--run_name", type=ll.run_name_arg, default=ll.LATEST)
    p.add_argument("--signal", default="TERM", choices=["TERM", "INT", "KILL"])
    p.add_argument(
        "--pkill",
        action="store_true",
        help="also signal every `-m mypt_jax.train` process (lost pid files)",
    )

    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM")
    p.add_argument("--yes", action="store_true", help="no confirmation prompt (gcloud --quiet)")
    return parser


BUILDERS = {
    "create": create_commands,
    "setup": setup_commands,
    "run": run_commands,
    "tail": tail_commands,
    "stop": stop_commands,
    "delete": delete_commands,
}


def main(argv: Sequence[str] | None = None) -> int:
    return ll.run_cli(argv, build_parser(), BUILDERS)


if __name__ == "__main__":
    sys.exit(main())
