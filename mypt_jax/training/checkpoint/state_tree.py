"""A checkpoint's state tree against the one this run expects, compared before any array is read.

A different tree is a config change, never damage: the checkpoint is read through an adapter
where one is known, else the resume is refused naming what differs (`TreeMismatch`; the
setup names the config field), with every checkpoint left in place.

Adapters:
- `no clip slot`: checkpoints written before the gradient clip was always in the optimizer
  chain (step/optim.py) by runs with `grad_clip` 0 hold the AdamW state alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from mypt_jax.training.checkpoint.read_faults import Refused
from mypt_jax.training.step.optim import ClipState


class TreeMismatch(Refused):
    """The checkpoint's state tree is not the one this run builds."""

    def __init__(self, step: int, missing: list[str], unexpected: list[str],
                 reshaped: list[str]):
        self.step, self.missing, self.unexpected, self.reshaped = (
            step, missing, unexpected, reshaped)
        parts = [f"{what} {', '.join(paths[:4])}{' ...' if len(paths) > 4 else ''}"
                 for what, paths in (("missing in the checkpoint:", missing),
                                     ("only in the checkpoint:", unexpected),
                                     ("other shapes:", reshaped)) if paths]
        super().__init__(f"checkpoint {step}'s state tree differs from this run's: "
                         + "; ".join(parts))


def _key(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_shapes(tree: Any) -> dict[str, tuple | None]:
    """"opt_state/1/0/mu/wte" -> shape, for a state, an abstract state or orbax's metadata
    (which stores named tuples as dicts and empty states as None: both have no leaves)."""
    return {"/".join(_key(k) for k in path): tuple(getattr(leaf, "shape", None) or ())
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@dataclasses.dataclass(frozen=True)
class Adapter:
    name: str
    applies: Callable[[Any], bool]  # to this run's abstract state
    to_saved: Callable[[Any], Any]  # this run's abstract state -> the checkpoint's tree
    from_saved: Callable[[Any], Any]  # the restored checkpoint tree -> this run's state


def _has_clip_slot(state) -> bool:
    return isinstance(state.opt_state, tuple) and bool(state.opt_state) and isinstance(
        state.opt_state[0], ClipState)


ADAPTERS = (
    Adapter("no clip slot", _has_clip_slot,
            lambda s: dataclasses.replace(s, opt_state=tuple(s.opt_state[1:])),
            lambda s: dataclasses.replace(s, opt_state=(ClipState(), *s.opt_state))),
)


def reader(step: int, saved_metadata: Any, abstract_state: Any
           ) -> tuple[Any, Callable[[Any], Any]]:
    """(the restore target, what turns the restored tree into this run's state), or raises
    TreeMismatch naming the leaves that differ."""
    saved, ours = leaf_shapes(saved_metadata), leaf_shapes(abstract_state)
    if saved == ours:
        return abstract_state, lambda s: s
    for adapter in ADAPTERS:
        if adapter.applies(abstract_state):
            target = adapter.to_saved(abstract_state)
            if leaf_shapes(target) == saved:
                return target, adapter.from_saved
    raise TreeMismatch(step, sorted(ours.keys() - saved.keys()), sorted(saved.keys() - ours.keys()),
                       sorted(k for k in ours.keys() & saved.keys() if ours[k] != saved[k]))
