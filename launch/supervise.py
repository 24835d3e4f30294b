"""`tpu.py supervise`: look at the VM and the run every --poll_s, and do what brings the run back.

A Spot or preemptible TPU VM's preemption takes the whole VM, and the worker's restart loop with
it, so the step that brings the run back (re-create the VM, set it up, start the same run: it
resumes from its checkpoint) has to run from here. launch/README.md, "Preemption and restart",
has the table of what each VM state and run status leads to.

tpu.py keeps the parser and the create/setup/run/delete builders, and hands the builders in
(`Builders`): it runs as a script (__main__), so importing it from here would load a second copy.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import launchlib as ll

RECREATE_STATES = ("PREEMPTED", "TERMINATED")  # a Spot/preemptible VM that was reclaimed
GONE = "GONE"  # describe says NOT_FOUND (a reclaimed VM can also be deleted by the service)
# The step for each state the dry run can plan for (READY: after an exit 75 that the worker's
# restart loop did not rerun).
STEP_FOR_STATE = {
    "PREEMPTED": "recreate",
    "TERMINATED": "recreate",
    GONE: "create",
    "READY": "rerun",
}


class Builders(NamedTuple):
    """tpu.py's builders of the commands of its subcommands, which supervise's steps are made of."""

    create: Callable[[argparse.Namespace], list[ll.Command]]
    setup: Callable[[argparse.Namespace], list[ll.Command]]
    run: Callable[..., list[ll.Command]]  # (args, extra, recreated=...)
    delete: Callable[[argparse.Namespace], list[ll.Command]]


def describe_command(args: argparse.Namespace) -> ll.Command:
    return ll.TpuTarget.from_args(args).vm("describe", "--format=value(state)")


def status_command(args: argparse.Namespace) -> ll.Command:
    # Worker 0 speaks for the slice: one worker's trainer failing stops the others.
    script = ll.status_script(args.remote_dir, args.run_name)
    return ll.TpuTarget.from_args(args, worker="0").shell(script)


def pinned_ref(args: argparse.Namespace) -> str | None:
    """The commit every setup ships, so that a re-created VM runs the code the run started with."""
    if args.repo_url:
        return args.ref  # cloned on the worker: a commit or tag pins it, a branch does not
    ref = args.ref or "HEAD"
    rev = subprocess.run(
        ["git", "-C", ll.REPO_ROOT, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if rev.returncode != 0:
        raise ll.LaunchError(f"--ref {ref}: not a commit in {ll.REPO_ROOT}")
    return rev.stdout.strip()


def supervise_plans(
    args: argparse.Namespace, extra: Sequence[str], build: Builders
) -> dict[str, list[ll.Command]]:
    """Commands per step, built once: a bad flag fails now, not at the first preemption."""
    create = build.create(args)
    setup = build.setup(argparse.Namespace(**{**vars(args), "ref": pinned_ref(args)}))
    # Here --init_from is setup's (what to copy); the trainer's goes after -- as --config.init_from.
    run_args = argparse.Namespace(**{**vars(args), "init_from": None})
    run = build.run(run_args, extra, recreated=True)
    delete = build.delete(argparse.Namespace(**{**vars(args), "yes": True}))
    return {
        "recreate": delete + create + setup + run,
        "create": create + setup + run,
        "launch": setup + run,  # READY, but this run never started here
        "rerun": run,
    }


def next_step(args: argparse.Namespace, state: str, status: str | None) -> str:
    """A step of supervise_plans, or "wait" or "done"; raises when the run failed."""
    if state == GONE:
        return "create"
    if state in RECREATE_STATES:
        return "recreate"
    if state == "STOPPED":
        raise ll.LaunchError(
            f"TPU VM {args.name} is STOPPED (stopped by hand?): start or delete it, "
            "then supervise again"
        )
    if state != "READY" or status == "running":
        return "wait"  # CREATING, STARTING, REPAIRING, ...: the service is working on it
    if status in ("stopped", "exit 0"):
        return "done"
    if status == f"exit {ll.PREEMPTED_EXIT_CODE}":
        return "rerun"  # the worker's loop gave up or was signalled with the host
    if status == "none":
        return "launch"
    raise ll.LaunchError(
        f"run {args.run_name} on {args.name} ended with {status!r} on worker 0: not restarting "
        f"(only exit {ll.PREEMPTED_EXIT_CODE} is); see its log with `tpu.py tail`"
    )


def _say(message: str) -> None:
    print(f"supervise {time.strftime('%H:%M:%S')}: {message}", file=sys.stderr, flush=True)


class _GcloudFailed(Exception):
    """A gcloud/ssh command failed: no capacity, a VM going down, the network. Tried again."""


def vm_state(args: argparse.Namespace) -> str:
    result = subprocess.run(describe_command(args), capture_output=True, text=True)
    if result.returncode == 0:
        return result.stdout.strip() or "UNKNOWN"
    if "NOT_FOUND" in result.stderr:
        return GONE
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise _GcloudFailed(f"describing {args.name} failed (exit status {result.returncode}): {last}")


def run_status(args: argparse.Namespace) -> str:
    result = subprocess.run(status_command(args), capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise _GcloudFailed(f"asking worker 0 of {args.name} how run {args.run_name} stands failed")
    return lines[-1].strip()


def run_step(plan: list[ll.Command]) -> None:
    try:
        ll.execute(plan, dry_run=False)
    except ll.LaunchError as e:
        raise _GcloudFailed(str(e)) from None


def supervise_commands(
    args: argparse.Namespace, extra: Sequence[str], build: Builders
) -> list[ll.Command]:
    """Dry run: the commands one round runs when the VM is --state. Else the loop itself."""
    plans = supervise_plans(args, extra, build)
    if args.dry_run:
        return [describe_command(args), status_command(args), *plans[STEP_FOR_STATE[args.state]]]
    if shutil.which("gcloud") is None:
        raise ll.LaunchError("gcloud not found on PATH; supervise runs it every round")
    starts = failures = 0
    while True:
        try:
            state = vm_state(args)
            status = run_status(args) if state == "READY" else None
            step = next_step(args, state, status)
            if step == "done":
                _say(f"run {args.run_name} ended ({status}); done")
                return []
            if step != "wait":
                if starts > args.max_relaunches:
                    raise ll.LaunchError(
                        f"run {args.run_name} needs starting again, but it was started "
                        f"{starts} times already (--max_relaunches {args.max_relaunches})"
                    )
                where = f"{args.name} is {state}" + (f", run {status}" if status else "")
                _say(f"{where}: {step}")
                run_step(plans[step])
                starts += 1
            failures = 0
        except _GcloudFailed as e:
            failures += 1
            if failures == args.max_failures:
                raise ll.LaunchError(f"{e} ({failures} rounds in a row failed)") from None
            _say(f"{e}; trying again in {args.poll_s:g} s")
        time.sleep(args.poll_s)
