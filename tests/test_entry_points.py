"""Every entry point answers `--help` with its usage on stdout and exit 0 (scripts probe with it)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from train_helpers import REPO

ENTRY_POINTS = ("train", "generate", "evaluate", "prepare", "convert", "pipeline", "preflight",
                "plot", "data")


def _help(module: str, flag: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"mypt_jax.{module}", flag], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_every_entry_point_answers_help_with_exit_0():
    calls = [(m, "--help") for m in ENTRY_POINTS] + [("train", "--helpshort"), ("train", "-h")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda call: (call, _help(*call)), calls))
    for (module, flag), result in done:
        assert result.returncode == 0, (module, flag, result.stderr[-1000:])
        assert "usage" in result.stdout.lower() or module == "train", (module, result.stdout[:300])
    train = dict(done)[("train", "--help")].stdout
    # Both command lines: ours and the upstream train.py's flags.
    for flag in ("--config", "--workdir", "--model_name", "--config_file", "--init_from_model",
                 "--max_iters", "--eval_prompts_file"):
        assert flag in train, flag
