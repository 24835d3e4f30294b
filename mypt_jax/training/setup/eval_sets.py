"""Extra eval sets, as the config names them: the val loss of other prepared datasets at every
eval, to see forgetting.

`eval_sets` is `"name=dir,name2=dir2"` (a string, so that `--config.eval_sets=...` and the
upstream's JSON `eval_sets` mapping and `--eval_dataset_dir` all land in one field). Each set
is read as the upstream reads one: the `val/` split of its directory, with the run's batch
size, block size, loss mask, sampling mode and epoch seed, as a stream of its own that
continues from eval to eval (its position is checkpointed). Its loss has the main val
loss's definition and its cost (`evals/val_loss.ValLoss`). It is logged as
`val_loss/<name>` (the upstream wrote `eval_<name>`). The red line of a set that rose is
`evals/health.forgetting`.
"""

from __future__ import annotations

import re
from pathlib import Path

from mypt_jax.data.dataset import resolve_split_dir
from mypt_jax.data.episodes import DatasetError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class EvalSetsError(ValueError):
    pass


def parse(spec: str) -> dict[str, str]:
    """`"a=dir1,b=dir2"` -> {"a": "dir1", "b": "dir2"}; "" -> {}."""
    sets: dict[str, str] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not path or not _NAME.fullmatch(name):
            raise EvalSetsError(f"eval_sets: {item!r} is not NAME=DIR (NAME of letters, digits, "
                                "'_', '.', '-')")
        if name in sets:
            raise EvalSetsError(f"eval_sets: {name!r} is named twice")
        sets[name] = path
    return sets


def format_spec(sets: dict[str, str]) -> str:
    return ",".join(f"{name}={path}" for name, path in sets.items())


def check(spec: str) -> dict[str, str]:
    """The sets, each with a val split on disk; the error names the set and its directory."""
    sets = parse(spec)
    for name, path in sets.items():
        try:
            resolve_split_dir(Path(path), "val")
        except DatasetError as e:
            raise EvalSetsError(f"eval_sets: {name}={path}: {e}") from None
    return sets
