"""Frozen parameters: the upstream's `freeze_layers` and `freeze_embeddings`.

The upstream sets requires_grad=False on every parameter of the first `freeze_layers` blocks
and, with `freeze_embeddings`, on the token and position tables, then builds AdamW (its usual
decay groups) over the parameters that still require a gradient. A tied output head is the
token table, so it freezes with it; the head's bias and the final norm keep training.

Block parameters here are stacked on a leading layer axis, so "the first N blocks" is rows
0..N-1 of every block array. The optimizer runs on a trainable view of the parameter tree
(`Freeze.view`): block arrays cut to rows N:, and a parameter frozen whole replaced by
`optax.MaskedNode` (as `optax.masked` does), so Adam's moments, the clip norm and the decay
exist for trainable rows only. The train step writes the updates into rows N: in place
(`apply_updates`) and never writes a frozen row, so frozen weights stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

BLOCKS = "blocks"  # the group of stacked per-layer parameters (param_table.py)
EMBEDDINGS = ("wte", "wpe")  # the token and position tables; a tied head is wte


def _name(key: Any) -> str:
    return str(getattr(key, "key", key))


@dataclasses.dataclass(frozen=True)
class Freeze:
    layers: int = 0  # rows 0..layers-1 of every stacked block parameter take no update
    embeddings: bool = False  # wte (and with it a tied head) and wpe take no update

    @property
    def active(self) -> bool:
        return self.layers > 0 or self.embeddings

    def rows(self, path: tuple, shape: tuple[int, ...]) -> int:
        """How many leading rows of this parameter are frozen (its first dimension if all)."""
        names = [_name(k) for k in path]
        if BLOCKS in names[:-1]:
            return min(self.layers, shape[0])
        if self.embeddings and len(names) == 1 and names[0] in EMBEDDINGS:
            return shape[0]
        return 0

    def view(self, tree: Any) -> Any:
        """The trainable part of a parameter-shaped tree: rows cut, whole frozen leaves masked."""
        if not self.active:
            return tree

        def cut(path, x):
            r = self.rows(path, x.shape)
            if r == 0:
                return x
            return optax.MaskedNode() if r >= x.shape[0] else x[r:]

        return jax.tree_util.tree_map_with_path(cut, tree)

    def stop_gradient(self, params: Any) -> Any:
        """Parameters frozen whole carry no gradient: their weight-gradient work is dropped.

        Partly frozen block stacks are left alone: the layer scan computes every layer's
        weight gradient anyway, and the view discards the frozen rows after it.
        """
        if not self.active:
            return params
        return jax.tree_util.tree_map_with_path(
            lambda path, x: jax.lax.stop_gradient(x) if self.rows(path, x.shape) >= x.shape[0] else x,
            params)

    def apply_updates(self, params: Any, updates_view: Any) -> Any:
        """`params` + the view's updates, written into the trainable rows only."""
        if not self.active:
            return optax.apply_updates(params, updates_view)

        def apply(path, p, u):
            if isinstance(u, optax.MaskedNode):
                return p
            r = self.rows(path, p.shape)
            new = (p[r:] + u).astype(p.dtype)  # optax.apply_updates' arithmetic
            return new if r == 0 else jax.lax.dynamic_update_slice_in_dim(p, new, r, axis=0)

        return jax.tree_util.tree_map_with_path(apply, params, updates_view)

    def unview(self, updates_view: Any, like: Any) -> Any:
        """The view's updates at full shape, zero on the frozen rows (the optax protocol)."""
        if not self.active:
            return updates_view

        def pad(path, x, u):
            if isinstance(u, optax.MaskedNode):
                return jnp.zeros_like(x)
            r = self.rows(path, x.shape)
            if r == 0:
                return u
            return jnp.concatenate([jnp.zeros((r, *x.shape[1:]), u.dtype), u], axis=0)

        return jax.tree_util.tree_map_with_path(pad, like, updates_view)

    def count(self, shapes: Any) -> tuple[int, int]:
        """(trainable, total) parameters of a tree of shapes (tuples) or arrays."""
        trainable = total = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(
                shapes, is_leaf=lambda x: isinstance(x, tuple))[0]:
            shape = leaf if isinstance(leaf, tuple) else leaf.shape
            n = math.prod(shape)
            total += n
            trainable += n - self.rows(path, shape) * (n // shape[0])
        return trainable, total


class FrozenTransformation(NamedTuple):
    """An optax transformation over the trainable view, plus what it freezes.

    `init`/`update` follow the optax protocol on whole parameter trees (updates come back
    full-shaped, zero on frozen rows). The train step calls `inner` on `freeze.view` trees
    instead and applies with `freeze.apply_updates`, so no full-shaped update is built.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    freeze: Freeze
    inner: optax.GradientTransformation  # works on freeze.view(...) trees


def trainable_only(inner: optax.GradientTransformation, freeze: Freeze) -> FrozenTransformation:
    """`inner` restricted to the parameters `freeze` leaves trainable."""

    def init(params):
        if not isinstance(params, Mapping):  # optax.tree_map_params probes with a placeholder
            return inner.init(params)
        return inner.init(freeze.view(params))

    def update(updates, state, params=None):
        params_view = None if params is None else freeze.view(params)
        new, state = inner.update(freeze.view(updates), state, params_view)
        return freeze.unview(new, updates), state

    return FrozenTransformation(init, update, freeze, inner)


def split(tx: Any) -> tuple[Freeze, Any]:
    """(what `tx` freezes, the transformation to run on `Freeze.view` trees)."""
    if isinstance(tx, FrozenTransformation):
        return tx.freeze, tx.inner
    return Freeze(), tx


# ----------------------------------------------------------------------------- the run


def notes(freeze: Freeze, shapes: Any, n_layer: int, tie_weights: bool) -> list[str]:
    """What is frozen, as the start of a run prints it (the upstream printed the same facts)."""
    if not freeze.active:
        return []
    trainable, total = freeze.count(shapes)
    blocks = f"blocks 0-{freeze.layers - 1} of {n_layer}" if freeze.layers else f"no block of {n_layer}"
    out = [f"frozen: {blocks}, embeddings {'frozen' if freeze.embeddings else 'trained'}; "
           f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.1f}%), "
           "the frozen ones hold no optimizer state"]
    if freeze.embeddings and tie_weights:
        out.append("freeze_embeddings with tie_weights: the output head is the token embedding, "
                   "so its weight is frozen too (lm_head_bias and ln_f still train)")
    return out


def resume_problem(freeze: Freeze, saved_config: dict | None, workdir: str) -> str | None:
    """Why the checkpoints in `workdir` cannot resume with `freeze`, or None.

    Their optimizer state holds moments for the rows that were trainable then; the upstream
    dropped such a state and went on with fresh moments, here the user chooses.
    """
    if not saved_config:
        return None
    saved = Freeze(layers=int(saved_config.get("freeze_layers", 0)),
                   embeddings=bool(saved_config.get("freeze_embeddings", False)))
    if saved == freeze:
        return None
    field = "freeze_layers" if saved.layers != freeze.layers else "freeze_embeddings"
    return (f"{field}: {workdir} was trained with freeze_layers={saved.layers}, "
            f"freeze_embeddings={saved.embeddings} (now {freeze.layers}, {freeze.embeddings}), "
            "and its optimizer state holds moments for the parameters trainable then; resume "
            "with the same values, or start a new --workdir with --config.init_from="
            f"{workdir} (the weights carry over, the optimizer starts fresh)")
