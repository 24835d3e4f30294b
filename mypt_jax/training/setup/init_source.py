"""What a run initialises from (`init_from`), classified and checked before any weights load.

`init_from` is another run's workdir, our model directory (config.json + params/) or an
upstream checkpoint (config.json + model.pt), local or remote. `describe_init` reads its
architecture, token map and the fields the upstream inherited from it; `check_architecture`
and `token_map_diff` hold it against the run's config and dataset. Errors name the field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from etils import epath

from mypt_jax.data.paths import as_path
from mypt_jax.data.tokenizer import Tokenizer, TokenizerError
from mypt_jax.model.config import ConfigError as ModelConfigError
from mypt_jax.model.config import ModelConfig
from mypt_jax.training.checkpoint.run_meta import CHECKPOINTS_DIR, latest_run_state

# Fields the upstream took from the init checkpoint instead of the config.
INHERITED_FIELDS = (
    "block_size", "epoch_seed", "episode_min_tokens", "batch_sampling_mode", "epoch_shuffle",
)


class InitSourceError(ValueError):
    """`init_from` cannot serve this run; the message starts with the field name."""


@dataclasses.dataclass(frozen=True)
class InitSource:
    """What `init_from` points at, read without loading any weights."""

    kind: str  # "run" (another run's workdir) | "model" (our model dir) | "upstream"
    path: epath.Path
    model_config: ModelConfig
    tokenizer: Tokenizer | None
    fields: dict[str, Any]  # the init's loader/training fields where it records them
    # The weights themselves, already on the devices: a finished phase handed to the next in
    # one process (training/handoff.py); None = read them from `path`.
    params: Any = None


def _read_json(path: epath.Path, field: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InitSourceError(f"{field}: cannot read {path}: {e}") from None


def _model_config_from_json(cfg: dict, path: epath.Path, field: str) -> ModelConfig:
    try:
        if "param_dtype" in cfg:  # ours (ModelConfig.to_dict)
            return ModelConfig.from_dict(cfg, source=str(path))
        return ModelConfig.from_upstream(cfg, source=str(path))
    except ModelConfigError as e:
        raise InitSourceError(f"{field}: {e}") from None


def _tokenizer(path: epath.Path, field: str) -> Tokenizer | None:
    if not path.is_file():
        return None
    try:
        return Tokenizer.load(path)
    except TokenizerError as e:
        raise InitSourceError(f"{field}: {e}") from None


def describe_init(path: str | Path, field: str = "init_from") -> InitSource:
    """Classifies `init_from` (local or remote) and reads its architecture and token map."""
    path = as_path(path)
    if not path.exists():
        raise InitSourceError(f"{field}: {path} does not exist")
    run = latest_run_state(path)
    if run is not None:
        mc = _model_config_from_json(run.model_config, path, field)
        tok = Tokenizer.from_state(run.tokenizer, source=str(path)) if run.tokenizer else None
        return InitSource("run", path, mc, tok, dict(run.config))
    if (path / CHECKPOINTS_DIR).is_dir():
        raise InitSourceError(f"{field}: {path} is a run directory without a finished checkpoint")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InitSourceError(
            f"{field}: {path} is neither a run workdir (checkpoints/), our model dir "
            "(config.json + params/) nor an upstream checkpoint (config.json + model.pt)"
        )
    cfg = _read_json(config_file, field)
    mc = _model_config_from_json(cfg, config_file, field)
    tok = _tokenizer(path / "tokenizer.json", field)
    kind = "model" if (path / "params").is_dir() else "upstream"
    if kind == "upstream" and not (path / "model.pt").is_file():
        raise InitSourceError(f"{field}: {path} has config.json but neither params/ nor model.pt")
    fields = {k: cfg[k] for k in INHERITED_FIELDS if k in cfg}
    return InitSource(kind, path, mc, tok, fields)


def token_map_diff(a: Tokenizer, b: Tokenizer) -> list[str]:
    names = sorted(set(a.ids_by_name) | set(b.ids_by_name))
    return [
        f"{n}: {a.ids_by_name.get(n)} != {b.ids_by_name.get(n)}"
        for n in names
        if a.ids_by_name.get(n) != b.ids_by_name.get(n)
    ]


def check_architecture(ours: ModelConfig, theirs: ModelConfig, field: str) -> list[str]:
    """Raises naming every differing field; a shorter learned block_size is a note (sliced)."""
    diffs = [d for d in ours.diff(theirs) if not d.startswith("block_size")]
    notes = []
    if ours.block_size != theirs.block_size:
        if ours.pos_encoding == "learned" and ours.block_size > theirs.block_size:
            diffs.append(
                f"block_size: {ours.block_size} > {theirs.block_size} (the init's position "
                "table has too few rows)"
            )
        else:
            notes.append(
                f"block_size {ours.block_size} (config) vs {theirs.block_size} (init checkpoint): "
                + ("the position table is cut to the first rows" if ours.pos_encoding == "learned"
                   else "RoPE needs no table")
            )
    if diffs and diffs != ["tie_weights: True != False"]:
        raise InitSourceError(
            f"{field}: architecture differs from the config (config != init): " + "; ".join(diffs)
        )
    if diffs:
        notes.append("tie_weights: the untied init's embedding and lm_head are averaged (upstream)")
    return notes
