"""The Phase 3a curriculum as data: each phase's datasets, config, test prompts and predecessor.

Paths follow the seed document's layout under a root (`data/sft_format_lock_alpha/...`,
`data/sft_ready/phase3a1_alpha`); `phase_config` is a phase's training ConfigDict with every
path resolved under it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PRESETS = ("real", "cpu")
MIX_SEED = 42  # the seed commands' default
VAL_SPLIT = 0.1  # the seed commands' --val_split
BASE_CHECKPOINT = "checkpoints/domain_v5_sft_ready"
_PIPELINE_PATHS = ("dataset_dir", "workdir", "log_file", "init_from")  # one per phase, not --set


class PipelineError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- the phase table


@dataclasses.dataclass(frozen=True)
class Generated:
    """A Step 1 dataset: which generator, its arguments, where the seed doc puts it."""

    generator: str  # "format_lock" | "echo" (datagen modules)
    kwargs: dict[str, Any]
    output_dir: str

    @property
    def path(self) -> str:
        return f"{self.output_dir}/{datagen_module(self.generator).OUTPUT_NAME}"


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    datasets: tuple[str, ...]  # keys of GENERATED; the first is this phase's, the rest replay
    mix_output: str | None  # None: prepare the first dataset as it is
    prepared: str
    config: str  # module under configs/ for the real preset
    test_prompts: str  # Step 4
    previous: str | None  # the phase whose run initialises this one


GENERATED = {
    "format_lock_alpha": Generated("format_lock", {"mode": "minimal", "math": "exclude"},
                                   "data/sft_format_lock_alpha"),
    "echo_beta": Generated("echo", {"gibberish": "exclude", "max_examples": 2500},
                           "data/sft_echo_beta"),
    "echo_gamma": Generated("echo", {"gibberish": "only"}, "data/sft_echo_gamma"),
    "format_lock_3a2": Generated("format_lock", {"mode": "full", "math": "include"},
                                 "data/sft_format_lock_3a2"),
}
PHASES = {
    p.name: p for p in (
        Phase("3a1_alpha", ("format_lock_alpha",), None, "data/sft_ready/phase3a1_alpha",
              "phase3a1_alpha", "configs/sft_eval/phase3a1_alpha_test_prompts.json", None),
        Phase("3a1_beta", ("echo_beta", "format_lock_alpha"),
              "data/sft_mixed/phase3a1_beta_mixed.jsonl", "data/sft_ready/phase3a1_beta",
              "phase3a1_beta", "configs/sft_eval/phase3a1_beta_test_prompts.json", "3a1_alpha"),
        Phase("3a1_gamma", ("echo_gamma", "echo_beta"),
              "data/sft_mixed/phase3a1_gamma_mixed.jsonl", "data/sft_ready/phase3a1_gamma",
              "phase3a1_gamma", "configs/sft_eval/phase3a1_gamma_test_prompts.json", "3a1_beta"),
        Phase("3a2", ("format_lock_3a2", "echo_beta"),
              "data/sft_mixed/phase3a2_mixed.jsonl", "data/sft_ready/phase3a2",
              "phase3a2", "configs/sft_eval/phase3a2_test_prompts.json", "3a1_gamma"),
    )
}


def datagen_module(name: str):
    return importlib.import_module(f"datagen.{name}")


def _configs(module: str):
    if str(REPO) not in sys.path:  # configs/ is a directory of the repository, not installed
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"configs.{module}")


def earlier_phases(phase: Phase) -> list[str]:
    """The phases before this one, first to last (each initialised the next)."""
    earlier, prev = [], phase.previous
    while prev is not None:
        earlier.insert(0, prev)
        prev = PHASES[prev].previous
    return earlier


def preset_replay(preset: str, name: str) -> dict[str, float]:
    """{earlier phase: ratio} whose train split the preset replays in this phase's mix
    (`curriculum.replay`); the real preset keeps the seed's mixes."""
    if preset != "cpu":
        return {}
    return dict(getattr(_configs("pipeline_cpu"), "REPLAY", {}).get(name, {}))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`field=value` strings -> dict; values are Python literals, else strings."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"--set {item!r}: expected field=value")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def count_records(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def test_results_path(workdir: str) -> Path:
    return Path(workdir) / "test_prompts.json"


def _anchor(root: Path, value: str) -> str:
    """A config path: absolute or a URL (gs://...) stays, else under the root."""
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str(root / value)


def repo_file(root: Path, value: str) -> str:
    """A file the repository ships (eval prompts): under the root if there, else the repo's."""
    if not value or Path(value).is_absolute() or (root / value).is_file():
        return _anchor(root, value)
    return str(REPO / value)


def phase_config(root: Path, phase: Phase, preset: str, init_from: str | None,
                 overrides: dict[str, Any]):
    """The training ConfigDict of a phase with every path resolved under the root."""
    from ml_collections import config_dict

    if preset == "cpu":
        c = _configs("pipeline_cpu").get_config(phase.name)
    else:
        c = _configs(phase.config).get_config()
    c = config_dict.ConfigDict(c.to_dict())
    c.dataset_dir = str(root / phase.prepared)
    c.workdir = _anchor(root, c.workdir)
    c.log_file = _anchor(root, c.log_file) if c.log_file else str(Path(c.workdir) / "log.jsonl")
    c.eval_prompts_file = repo_file(root, c.eval_prompts_file)
    if init_from is not None:
        c.init_from = init_from
    elif phase.previous is not None:
        c.init_from = ""  # filled in by the caller from the previous phase's config
    else:
        c.init_from = _anchor(root, c.init_from)
    for key, value in overrides.items():
        if key not in c:
            raise PipelineError(f"--set {key}: unknown config field (see configs/base.py)")
        if key in _PIPELINE_PATHS:
            raise PipelineError(f"--set {key}: set by the pipeline per phase (use --root/--init_from)")
        if isinstance(c[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        c[key] = value
    return c
