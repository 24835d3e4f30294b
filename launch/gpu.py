"""One multi-GPU host, this machine or over ssh (--host user@h): set up, run, tail, stop.

  python launch/gpu.py setup --host me@gpu-box --data gs://bucket/phase3a1
  python launch/gpu.py run   --host me@gpu-box --run_name a1 -- --config.mesh_data=-1
  python launch/gpu.py tail  --host me@gpu-box
  python launch/gpu.py stop  --host me@gpu-box

One trainer process sees all local GPUs (no jax.distributed). It is rerun on the host while it
exits 75 (preempted, checkpoint saved); a GPU VM that is gone must be re-created by hand, then
`setup` and the same `run` resume. Every subcommand takes --dry_run: print the commands (one
per line), run nothing. See launch/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import launchlib as ll

# From MaxText's GPU recipes (JAX_STACK_NOTES "What makes small-model training fast"), kept to
# the flags jaxlib 0.10.2 still knows (tests/test_launch.py checks): an unknown flag is fatal.
DEFAULT_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",  # overlap collectives with compute
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",  # the scanned layer loop
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
    "--xla_gpu_enable_triton_gemm=false",  # cuBLAS for the matmuls
)
DEFAULT_MEM_FRACTION = "0.90"  # of each GPU's memory preallocated by XLA (its default is 0.75)


def _target(args: argparse.Namespace) -> ll.SshTarget | ll.LocalTarget:
    return ll.SshTarget(args.host) if args.host else ll.LocalTarget()


def _remote_dir(args: argparse.Namespace) -> str:
    if args.remote_dir:
        return args.remote_dir
    return ll.DEFAULT_REMOTE_DIR if args.host else ll.REPO_ROOT


def trainer_env(args: argparse.Namespace) -> dict[str, str]:
    """XLA settings first, then --env, so an explicit --env wins."""
    xla_flags = [] if args.no_default_xla_flags else list(DEFAULT_XLA_FLAGS)
    xla_flags += args.xla_flag
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": args.mem_fraction}
    if xla_flags:
        env["XLA_FLAGS"] = " ".join(xla_flags)
    if args.gpus:
        env["CUDA_VISIBLE_DEVICES"] = args.gpus
    env.update(ll.parse_env(args.env))
    return env


def setup_commands(args: argparse.Namespace) -> list[ll.Command]:
    if args.repo_url and not args.host:
        raise ll.LaunchError("--repo_url needs --host: this machine already has the checkout")
    commands, notes = ll.setup_commands(
        _target(args),
        _remote_dir(args),
        repo_url=args.repo_url,
        ref=args.ref,
        tarball=ll.tarball_path(args.host or "local"),
        python=args.python,
        jax_extra=f"cuda{args.cuda}",
        data=args.data,
        init_from=args.init_from,
        init_dest=args.init_dest,
        install=not args.skip_install,
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return commands


def run_commands(args: argparse.Namespace, extra: Sequence[str]) -> list[ll.Command]:
    return [ll.run_command(_target(args), _remote_dir(args), args, extra, trainer_env(args))]


def tail_commands(args: argparse.Namespace) -> list[ll.Command]:
    script = ll.tail_script(_remote_dir(args), args.run_name, args.lines, not args.no_follow)
    return [_target(args).shell(script)]


def stop_commands(args: argparse.Namespace) -> list[ll.Command]:
    script = ll.stop_script(_remote_dir(args), args.run_name, args.signal, args.pkill)
    return [_target(args).shell(script)]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", help="user@host to ssh to (default: this machine)")
    common.add_argument(
        "--remote_dir",
        help="checkout on the host (default: mypt-jax under its "
        "home with --host, else this repository)",
    )
    common.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")

    parser = argparse.ArgumentParser(prog="launch/gpu.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("setup", parents=[common], help="code + venv (+ data) on the host")
    p.add_argument(
        "--repo_url",
        help="git clone this URL on the host (default: ship a "
        "`git archive` of this checkout); needs --host",
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
        "--cuda",
        default="12",
        choices=["12", "13"],
        help="jax[cudaNN] wheel; CUDA 13 needs a newer driver (default: %(default)s)",
    )
    p.add_argument(
        "--data", help="dataset dir to copy to the host's data/sft_ready/ (gs:// or local)"
    )
    p.add_argument("--init_from", help="checkpoint or run dir to copy to the host")
    p.add_argument(
        "--init_dest",
        default=ll.INIT_DEST,
        help="where --init_from goes: checkpoints (a base model) or runs (a previous run)",
    )
    p.add_argument("--skip_install", action="store_true", help="only ship code / copy data")

    p = sub.add_parser("run", parents=[common], help="start the trainer; trainer flags go after --")
    p.add_argument(
        "--run_name",
        type=ll.run_name_arg,
        default=time.strftime("run-%Y%m%d-%H%M%S"),
        help="names the log and pid files (default: run-<time>)",
    )
    p.add_argument("--config", default=ll.DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument("--workdir", help="default: runs/<run_name> in the checkout")
    p.add_argument("--dataset_dir", help="sets --config.dataset_dir")
    p.add_argument("--init_from", help="sets --config.init_from")
    p.add_argument(
        "--mem_fraction",
        default=DEFAULT_MEM_FRACTION,
        help="XLA_PYTHON_CLIENT_MEM_FRACTION (default: %(default)s)",
    )
    p.add_argument(
        "--xla_flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra XLA_FLAGS entry (repeatable)",
    )
    p.add_argument(
        "--no_default_xla_flags",
        action="store_true",
        help="drop the latency-hiding / pipelined-collective defaults",
    )
    p.add_argument("--gpus", help="CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the trainer (repeatable; wins over the above)",
    )
    p.add_argument(
        "--max_restarts",
        type=int,
        default=ll.DEFAULT_MAX_RESTARTS,
        help=f"reruns after exit {ll.PREEMPTED_EXIT_CODE} (preempted, checkpoint saved) "
        "before giving up (default: %(default)s)",
    )

    p = sub.add_parser("tail", parents=[common], help="follow the log")
    p.add_argument("--run_name", type=ll.run_name_arg, default=ll.LATEST)
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--no_follow", action="store_true", help="print the last lines and exit")

    p = sub.add_parser(
        "stop", parents=[common], help="mark the run stopped and signal it (it saves, no restart)"
    )
    p.add_argument("--run_name", type=ll.run_name_arg, default=ll.LATEST)
    p.add_argument("--signal", default="TERM", choices=["TERM", "INT", "KILL"])
    p.add_argument(
        "--pkill",
        action="store_true",
        help="also signal every `-m mypt_jax.train` process (lost pid files)",
    )
    return parser


BUILDERS = {
    "setup": setup_commands,
    "run": run_commands,
    "tail": tail_commands,
    "stop": stop_commands,
}


def main(argv: Sequence[str] | None = None) -> int:
    return ll.run_cli(argv, build_parser(), BUILDERS)


if __name__ == "__main__":
    sys.exit(main())
