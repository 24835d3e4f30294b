"""Train, resume or report a run.

    python -m mypt_jax.train --config=configs/phase3a1_gamma.py [--config.field=value ...]
        [--workdir=runs/x]

Rerunning the same command resumes from the newest checkpoint in the workdir.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "preset file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where the run lives (overrides config.workdir)")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize() first (one process per host)"
)
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    import jax

    from mypt_jax import distributed, hostmem

    hostmem.keep_freed_memory()

    # Joins when the environment names a coordinator (or --distributed forces it, as on TPU
    # pods); must run before anything touches the JAX backend.
    distributed.maybe_initialize(force=_DISTRIBUTED.value)
    from mypt_jax import trainer
    from mypt_jax.config import ConfigError

    try:
        summary = trainer.train(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        sys.exit(3)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2, default=str))


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


if __name__ == "__main__":
    message = unknown_override(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)
    app.run(main)
