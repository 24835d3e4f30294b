"""`python -m mypt_jax.data inspect`: dataset stats, one decoded row, and an optional npz dump.

    python -m mypt_jax.data inspect --dataset_dir D --config C [--split train]
        [--num_batches N] [--out F.npz] [--config.batch_size=4 ...]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mypt_jax.data import episodes
from mypt_jax.data.dataset import EpisodeSplit, dataset_tokenizer, read_metadata
from mypt_jax.data.episodes import DatasetError
from mypt_jax.data.loader import make_iterator
from mypt_jax.data.tokenizer import Tokenizer, TokenizerError

LOADER_CONFIG_FIELDS = {  # flat upstream-named config field -> make_iterator argument
    "batch_size": "batch_size",
    "block_size": "block_size",
    "epoch_seed": "epoch_seed",
    "batch_sampling_mode": "mode",
    "episode_min_tokens": "episode_min_tokens",
    "epoch_shuffle": "shuffle",
    "use_loss_mask": "use_loss_mask",
}


def load_config(spec: str, overrides: Sequence[str] = ()):
    """`path.py[:arg]` -> its `get_config([arg])`, with `--config.field=value` overrides."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_mypt_data_config", path)
    if module_spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        key, eq, value = item.removeprefix("--config.").partition("=")
        if not eq or key not in config:
            raise ValueError(f"{item}: expected --config.<field>=<value> with a field of {path}")
        config[key] = _parse_override(item, config[key], value)
    return config


def _parse_override(item: str, current: Any, value: str) -> Any:
    """`value` as the type of the field's current value, as absl's --config flags parse it."""
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{item}: expected true/false")
        return value.lower() in ("true", "1")
    if isinstance(current, tuple | list):
        try:
            parsed = ast.literal_eval(value) if value.strip() else ()
        except (ValueError, SyntaxError):
            raise ValueError(f"{item}: expected a tuple such as (64, 512)") from None
        parsed = tuple(parsed) if isinstance(parsed, tuple | list) else (parsed,)
        return type(current)(parsed)
    if current is None:
        return value
    try:
        return type(current)(value)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(type(current), type(current).__name__)
        raise ValueError(f"{item}: expected {kind}") from None


def iterator_kwargs(config) -> dict[str, Any]:
    """make_iterator arguments from a config's flat loader fields (absent ones keep defaults)."""
    missing = [f for f in ("batch_size", "block_size") if f not in config]
    if missing:
        raise ValueError(f"config lacks {missing}")
    kwargs = {arg: config[field] for field, arg in LOADER_CONFIG_FIELDS.items() if field in config}
    kwargs.setdefault("epoch_seed", 1337)  # the upstream GPTConfig default
    return kwargs


def render_row(tokenizer: Tokenizer, inputs_T, targets_T, loss_mask_T, color: bool = False) -> str:
    """One row as text, trained targets wrapped in [[ ]] (or green), trailing padding counted."""
    ids = [int(inputs_T[0]), *map(int, targets_T)]
    trained = [False, *(float(m) > 0 for m in loss_mask_T)]
    pad = 0
    while len(ids) > 1 and ids[-1] == tokenizer.eot_id and not trained[-1]:
        ids.pop(), trained.pop()
        pad += 1
    open_, close = ("\x1b[32m", "\x1b[0m") if color else ("[[", "]]")
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = tokenizer.decode(ids[start:i])
            parts.append(f"{open_}{text}{close}" if trained[start] else text)
            start = i
    return "".join(parts) + (f" <+{pad} pad>" if pad else "")


def inspect(
    dataset_dir: str | Path,
    config,
    *,
    split: str = "train",
    num_batches: int = 1,
    out: str | Path | None = None,
    color: bool = False,
) -> dict[str, Any]:
    """Prints dataset stats and the first row decoded; optionally stacks batches into an npz."""
    kwargs = iterator_kwargs(config)
    tokenizer = dataset_tokenizer(dataset_dir)
    episode_split = EpisodeSplit.load(
        dataset_dir,
        split,
        tokenizer=tokenizer,
        episode_min_tokens=kwargs.get("episode_min_tokens", 2),
        use_loss_mask=kwargs.get("use_loss_mask", True),
    )
    stats = {
        "metadata": read_metadata(dataset_dir),
        split: episode_split.stats(kwargs["block_size"]),
        "loader": kwargs,
    }
    print(json.dumps(stats, indent=2))
    iterator = make_iterator(
        dataset_dir, split, tokenizer=tokenizer, process_index=0, process_count=1, **kwargs
    )
    batches = [next(iterator) for _ in range(max(num_batches, 1))]
    iterator.close()
    first = batches[0]
    print(f"\nbatch 0, row 0 ({'trained span in green' if color else 'trained span in [[ ]]'}):")
    print(
        render_row(tokenizer, first["inputs"][0], first["targets"][0], first["loss_mask"][0], color)
    )
    if out is not None:
        out = Path(out)
        arrays = {k: np.stack([b[k] for b in batches]) for k in first}
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(out)
        print(
            f"\nwrote {len(batches)} batches to {out}: "
            + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in arrays.items())
        )
    return stats


def build_parser() -> argparse.ArgumentParser:
    """`inspect` and its flags; `--config.field=value` overrides are left for `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m mypt_jax.data", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("inspect", help="dataset stats, one decoded row, optional npz dump")
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--config", required=True, help="ml_collections config file[:arg]")
    p.add_argument("--split", default="train", choices=episodes.SPLITS)
    p.add_argument("--num_batches", type=int, default=1)
    p.add_argument(
        "--out", help="write inputs/targets/loss_mask of the batches, stacked, to this .npz"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        config = load_config(args.config, rest)
        inspect(
            args.dataset_dir,
            config,
            split=args.split,
            num_batches=args.num_batches,
            out=args.out,
            color=sys.stdout.isatty(),
        )
    except (DatasetError, TokenizerError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
