"""Shared by the training tests: a tiny prepared dataset, tiny configs, subprocess runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# XLA:CPU spends most of a tiny program's compile in LLVM's optimization passes. The suite's
# programs are tiny and run a few steps, so they compile without them: about 45% less CPU time
# on tests/test_train_step.py and test_model.py. The CPU curriculum, which trains for minutes,
# keeps them (`fast_compile=False`).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int | None, fast_compile: bool = True) -> str:
    """XLA_FLAGS for a test process: `devices` simulated CPU devices (None: XLA's default)."""
    flags = [f"--xla_force_host_platform_device_count={devices}"] if devices else []
    return " ".join([*flags, *([FAST_COMPILE_FLAGS] if fast_compile else [])])


WORDS = ["apple", "blue", "cat", "door", "egg", "fish", "green", "house", "ice", "jam",
         "kite", "lamp", "moon", "nest", "owl", "pear", "queen", "red", "sun", "tree"]


def write_chat_jsonl(path: Path, n: int = 60) -> Path:
    with path.open("w") as f:
        for i in range(n):
            w = WORDS[i % len(WORDS)]
            word = w.capitalize() if i % 3 == 0 else w
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Say {word}."},
                {"role": "assistant", "content": f"{word}."},
            ]}) + "\n")
    return path


def make_dataset(tmp: Path, n: int = 60) -> Path:
    from mypt_jax.data.prepare import prepare

    out = tmp / "ds"
    prepare(write_chat_jsonl(tmp / "chat.jsonl", n), out, val_split=0.2, progress=False)
    return out


def tiny_config(dataset_dir: Path | str, workdir: Path | str, **overrides):
    from configs import cpu_tiny

    c = cpu_tiny.get_config()
    c.dataset_dir = str(dataset_dir)
    c.workdir = str(workdir)
    c.block_size = 32
    c.n_embd = 32
    c.batch_size = 8
    c.eval_iters = 2
    c.tensorboard = False
    for k, v in overrides.items():
        c[k] = v
    return c


def run_module(args: list[str], *, devices: int = 1, timeout: float = 600, env=None,
               fast_compile: bool = True):
    full_env = dict(os.environ, **(env or {}))
    full_env["XLA_FLAGS"] = xla_flags(devices, fast_compile)
    full_env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [PYTHON, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def train_cli(config_file: str, workdir: Path, overrides: dict) -> list[str]:
    return ["-m", "mypt_jax.train", f"--config={config_file}", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return lines


def final_params(workdir: Path, step: int | None = None) -> dict:
    """The params of a run's newest (or given) checkpoint, as host numpy arrays."""
    import jax

    from mypt_jax.parallel import sharding
    from mypt_jax.training.checkpoint import manager as checkpoint
    from mypt_jax.training.checkpoint import run_meta
    from mypt_jax.training.step import train_step

    meta = run_meta.latest_run_meta(workdir)
    from mypt_jax.model import ModelConfig

    mc = ModelConfig.from_dict(meta["model_config"])
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    params, _ = checkpoint.restore_params(workdir, train_step.abstract_params(mc, mesh), step)
    return jax.tree.map(np.asarray, params)


# `python -m mypt_jax.train ARGS`, except that the process (of JAX_PROCESS_ID {process}, or any
# when "") sends itself {signal} as the train step is called for the {at}-th time in this
# process (0-based): a real signal at a step that does not depend on the machine's load, where
# a watcher polling the log would race the run. SIGKILL flushes nothing, as `kill -9`.
_SIGNAL_AT = """
import os, runpy, signal, sys
from mypt_jax.training.compilation import program_set as programs
call = programs.Programs.call
calls = [0]
def call_then_signal(self, kind, *args):
    if kind == "train":
        if calls[0] == {at} and "{process}" in ("", os.environ.get("JAX_PROCESS_ID", "0")):
            os.kill(os.getpid(), signal.{signal})
        calls[0] += 1
    return call(self, kind, *args)
programs.Programs.call = call_then_signal
sys.argv[0] = "mypt_jax.train"
runpy.run_module("mypt_jax.train", run_name="__main__", alter_sys=True)
"""


def signalled(cli: list[str], at: int, signal: str, process: int | None = None) -> list[str]:
    """`cli` (a `train_cli` argv) run so that it gets `signal` as update `at` starts."""
    code = _SIGNAL_AT.format(at=at, signal=signal, process="" if process is None else process)
    return ["-c", code, *cli[2:]]


# `python -m mypt_jax.train ARGS`, except that the process (of JAX_PROCESS_ID {process}, or any
# when "") sends itself {signal} as a named start-up point begins: "restore" (finding and
# reading the checkpoint), "compile" (the compile-ahead), "eval" (the first eval).
_SIGNAL_DURING = """
import os, signal, sys, runpy
from mypt_jax.training.checkpoint import preemption
preemption.install()
from mypt_jax.training.setup import resume
from mypt_jax.training.compilation import compile_plan
from mypt_jax.training.evals import evaluator
owner, name = {{"restore": (resume, "find_start"), "compile": (compile_plan, "compile_run"),
                "eval": (evaluator.Evaluator, "run")}}["{point}"]
original, sent = getattr(owner, name), []
def signal_then_call(*args, **kwargs):
    if not sent and "{process}" in ("", os.environ.get("JAX_PROCESS_ID", "0")):
        sent.append(1)
        os.kill(os.getpid(), signal.{signal})
    return original(*args, **kwargs)
setattr(owner, name, signal_then_call)
sys.argv[0] = "mypt_jax.train"
runpy.run_module("mypt_jax.train", run_name="__main__", alter_sys=True)
"""


def signalled_during(cli: list[str], point: str, signal: str,
                     process: int | None = None) -> list[str]:
    """`cli` (a `train_cli` argv) run so that it gets `signal` as start-up `point` begins."""
    code = _SIGNAL_DURING.format(point=point, signal=signal,
                                 process="" if process is None else process)
    return ["-c", code, *cli[2:]]
