"""Train, resume or report a run.

    python -m mypt_jax.train --config=configs/phase3a1_gamma.py [--config.field=value ...]
        [--workdir=runs/x]
    python -m mypt_jax.train --model_name NAME --dataset_dir DIR --init_from_model NAME \\
        --config_file UPSTREAM.json [--eval_prompts_file F] [upstream numeric flags ...]

Rerunning the same command resumes from the newest checkpoint in the workdir. The second form
is the upstream train.py command line (mypt_jax/interop/upstream_cli.py); both mix, lowest first:
configs/base.py or --config < --config_file < upstream flags < --config.field and --workdir.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from mypt_jax.interop import upstream_cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "preset file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where the run lives (overrides config.workdir)")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize() first (one process per host)"
)
flags.mark_flags_as_required(["config"])


def main(argv, upstream: upstream_cli.Translation | None = None,
         keep: frozenset[str] = frozenset()) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    import jax

    from mypt_jax.parallel import distributed, host_failure, hostmem

    hostmem.keep_freed_memory()

    # Joins when the environment names a coordinator (or --distributed forces it, as on TPU
    # pods); must run before anything touches the JAX backend.
    distributed.maybe_initialize(force=_DISTRIBUTED.value)
    host_failure.watch()  # another process's failure ends this one too, with its exit code
    from mypt_jax.training import exit_codes, trainer

    try:
        config = _CONFIG.value
        if upstream is not None:
            config = upstream_cli.apply(config, upstream, set(keep))
            if jax.process_index() == 0:
                print(upstream.summary, file=sys.stderr, flush=True)
        summary = trainer.train(config, _WORKDIR.value)
    except Exception as e:
        _fail(e, exit_codes.user_error(e))
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2, default=str))


def _fail(e: Exception, known: tuple[int, str] | None) -> None:
    """One line and its exit code for a known error, the traceback for a bug; with several
    processes the others are told and stop with the same code (parallel/host_failure.py)."""
    from mypt_jax.parallel import host_failure

    joined = host_failure.joined()
    if known is None and not joined:
        raise e
    host_failure.failing()
    if known is None:
        traceback.print_exc()
        code, line = 1, f"{type(e).__name__}: {e}".splitlines()[0]
    else:
        code, line = known
        print(line, file=sys.stderr, flush=True)
    code = host_failure.report(code, line)
    if joined and code not in host_failure.NOT_REPORTED:
        host_failure.leave(code)  # not jax's shutdown barrier: the other processes are leaving
    sys.exit(code)


def unknown_override(argv: list[str]) -> str | None:
    """A clean message for `--config.<field>=` naming no field (absl would raise a traceback)."""
    import difflib
    import importlib.util

    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not paths or not os.path.isfile(paths[-1].split(":")[0]):
        return None
    spec = importlib.util.spec_from_file_location("_train_preset", paths[-1].split(":")[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields = set(module.get_config().keys())
    for arg in argv:
        if arg.startswith("--config."):
            name = arg[len("--config."):].split("=", 1)[0].split(".", 1)[0]
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                return f"config error: {name}: unknown config field{hint}; fields are in configs/base.py"
    return None


_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def usage() -> str:
    """This command's help: both forms, our flags and the upstream's (absl's own --help exits 1)."""
    ours = "\n".join(f"  --{name}: {flags.FLAGS[name].help}"
                      for name in ("config", "workdir", "distributed"))
    upstream = upstream_cli.build_parser().format_help().split("options:\n", 1)[-1]
    return (f"{__doc__.strip()}\n\nflags:\n{ours}\n  --config.FIELD=VALUE: any field of "
            f"configs/base.py (or of the --config preset)\n\nthe upstream train.py flags:\n"
            f"{upstream.rstrip()}\n")


def cli(argv: list[str]) -> None:
    """Takes the upstream train.py flags off the command line; absl parses the rest."""
    if any(a in _HELP_FLAGS for a in argv[1:]):
        print(usage())
        sys.exit(0)
    try:
        translation, rest, keep = upstream_cli.from_argv(argv[1:])
    except upstream_cli.UpstreamConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    message = unknown_override(rest)
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)
    app.run(functools.partial(main, upstream=translation, keep=keep), argv=[argv[0], *rest])


if __name__ == "__main__":
    from mypt_jax.parallel import stack
    from mypt_jax.training.checkpoint import preemption

    preemption.install()  # first: a SIGTERM during the imports, restore or compiles is not lost

    stack.unlimited_for_tpu_compiles()
    cli(sys.argv)
