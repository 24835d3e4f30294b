"""The val loss: the upstream's number, from one pass over the distinct episodes it covers.

The upstream's val loss is the mean over `eval_iters` val batches of each batch's masked
mean. With `eval_iters=200` and gamma's 888 val episodes (56 batches of 16) that computes
every episode's loss about 3.6 times per eval. A row's loss depends only on its episode
(rows never see each other, and dropout is off), so `ValLoss` computes each distinct
episode's loss sum and token count once, then rebuilds every batch's mean from the
episodes it holds: the same number (float64 sums on the host), at most as many rows as
before and usually far fewer.

When the eval's batches span at least the whole split, every episode is needed at every
eval, so the split's rows are shaped once (sorted by length into tightly trimmed,
trained-position batches) and kept on the devices between evals.

The val stream's position advances by `eval_iters` per eval exactly as before, so the
batches an eval covers, and what a checkpoint records, are unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mypt_jax.data import batching
from mypt_jax.data import loader as data
from mypt_jax.model import loss as loss_lib
from mypt_jax.model.param_table import param_shardings
from mypt_jax.training.step.train_step import batch_sharding, replicated


def make_row_loss_step(mdef, mesh, *, loss_chunk_size: int = 0, accuracy: bool = False):
    """`rows(params, batch) -> (masked CE sum [B], mask count [B])`, deterministic;
    `accuracy=True` adds (targets predicted [B], targets scored [B]) (`loss.head_ce_rows`)."""

    def rows(params, batch):
        model = mdef.merge(params)
        h = model.hidden(batch["inputs"], positions_BxT=batch.get("positions"),
                         segment_ids_BxT=batch.get("segment_ids"), deterministic=True,
                         rngs=None, mesh=mesh)
        if "flat_index" in batch:
            raise ValueError("a flat-head batch has no per-row sums; shape evals by layout.per_row")
        if "loss_index" in batch:
            h = loss_lib.gather_positions(h, batch["loss_index"])
        n = h.shape[1]
        chunk = loss_chunk_size if 0 < loss_chunk_size < n and n % loss_chunk_size == 0 else 0
        return loss_lib.head_ce_rows(h, *model.output_head(), batch["targets"],
                                     batch["loss_mask"], chunk, mesh, accuracy=accuracy)

    return jax.jit(rows, in_shardings=(param_shardings(mdef.config, mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


class ValLoss:
    """`val(params, position) -> (val_loss, token-weighted val loss)` over batches
    `position .. position + eval_iters - 1` of the val stream; `accuracy(params, position)`
    counts predicted and scored targets over the same kind of window (a row function made
    with `accuracy=True`)."""

    def __init__(self, source: data.EpisodeBatchSource, row_fn, mesh, layout: batching.Layout,
                 eval_iters: int, name: str = ""):
        self.source, self.row_fn, self.mesh, self.eval_iters = source, row_fn, mesh, eval_iters
        self.name = name  # the eval set's name; "" for the run's own val split
        # One episode per row: packing would mix episodes in a row's sum.
        self.layout = dataclasses.replace(layout, pack=False)
        n, rows = len(source.split), eval_iters * source.batch_size
        self.resident = rows >= n
        self._resident = None  # placed on first use, after `use_programs`

    def _eval_ids(self, position: int) -> np.ndarray:
        """The distinct episodes one eval computes, in the order they are batched."""
        if self.resident:
            return self._by_length(np.arange(len(self.source.split)))
        ids_KxB = np.stack([self.source.global_episode_ids(position + k)
                            for k in range(self.eval_iters)])
        return self._by_length(np.unique(ids_KxB))

    def shape_counts(self, positions) -> dict[batching.BatchShape, int]:
        """Exact batch shape -> batches, over evals at val positions `positions` (for a plan)."""
        kept_G, trained_G = self.source.stats_G()
        counts: dict[batching.BatchShape, int] = {}
        b = self.source.batch_size
        for position in positions[:1] if self.resident else positions:
            for chunk in self._chunks(self._eval_ids(position)):
                shape = batching.natural_shape(
                    kept_G[chunk], trained_G[chunk], self.layout, local_rows=b,
                    prepacked=self.source.split.segmented)
                counts[shape] = counts.get(shape, 0) + (len(positions) if self.resident else 1)
        return counts

    def use_programs(self, programs: tuple[batching.BatchShape, ...]) -> None:
        """Pads every eval batch up to the first of `programs` that covers it (a plan)."""
        self.layout = dataclasses.replace(self.layout, programs=tuple(programs))
        self._resident = None

    def _by_length(self, ids: np.ndarray) -> np.ndarray:
        """Episodes sorted by kept length: each batch's rows trim to nearly the same length."""
        kept = self.source.stats_G()[0][ids]
        return ids[np.argsort(kept, kind="stable")]

    def _chunks(self, ids: np.ndarray) -> np.ndarray:
        """`ids` in global batches of batch_size rows, the last one topped up with repeats of
        its last episode (whose results are ignored)."""
        b = self.source.batch_size
        pad = -len(ids) % b
        ids = np.concatenate([ids, np.repeat(ids[-1:], pad)]) if pad else ids
        return ids.reshape(-1, b)

    def _place(self, ids: np.ndarray) -> list[tuple[np.ndarray, dict]]:
        """`ids` in global batches (`_chunks`), shaped and put on the devices."""
        placed = []
        for chunk in self._chunks(ids):
            shaped, _ = batching.shape_batch(
                self.source.rows_for(chunk), self.layout, pad_id=self.source.pad_id,
                process_index=jax.process_index(), process_count=jax.process_count())
            placed.append((chunk, data.global_batch(shaped, self.mesh)))
        return placed

    def episode_sums(self, params, ids: np.ndarray) -> list[np.ndarray]:
        """Per episode in `ids`, as arrays over the split's G: the row function's outputs
        (loss sum, token count[, targets predicted, targets scored])."""
        if self.resident:
            if self._resident is None:
                self._resident = self._place(self._eval_ids(0))
            placed = self._resident
        else:
            placed = self._place(self._by_length(np.unique(ids)))
        out = jax.device_get([self.row_fn(params, batch) for _, batch in placed])
        n = len(self.source.split)
        stats_G = [np.zeros(n, np.float64) for _ in out[0]] if out else [np.zeros(n)] * 2
        for (chunk, _), rows in zip(placed, out, strict=True):
            for stat_G, stat_B in zip(stats_G, rows, strict=True):
                stat_G[chunk] = stat_B  # a repeated last episode writes the same value again
        return stats_G

    def _window(self, position: int) -> np.ndarray:
        return np.stack([self.source.global_episode_ids(position + k)
                         for k in range(self.eval_iters)])

    def __call__(self, params, position: int) -> tuple[float, float]:
        return self.evaluate(params, position)[:2]

    def evaluate(self, params, position: int, accuracy_at: int | None = None
                 ) -> tuple[float, float, tuple[int, int] | None]:
        """The loss pair of the window at `position` and, with `accuracy_at`, the accuracy
        counts of the window there (`accuracy`), from one pass over both windows' episodes:
        the two windows share most of them, or all (the same window, or the resident split)."""
        ids_KxB = self._window(position)
        acc_KxB = None if accuracy_at is None else self._window(accuracy_at)
        stats_G = self.episode_sums(
            params, ids_KxB if acc_KxB is None else np.concatenate([ids_KxB, acc_KxB]))
        sum_G, count_G = stats_G[:2]
        s_K, c_K = sum_G[ids_KxB].sum(axis=1), count_G[ids_KxB].sum(axis=1)
        per_batch_K = s_K / np.maximum(c_K, 1.0)
        counts = None if acc_KxB is None else _counts(stats_G, acc_KxB)
        return float(per_batch_K.mean()), float(s_K.sum() / max(c_K.sum(), 1.0)), counts

    def accuracy(self, params, position: int) -> tuple[int, int]:
        """(targets predicted, targets scored) over the window's batches, an episode counted
        once per batch that holds it (the upstream's sums over its batches)."""
        ids_KxB = self._window(position)
        return _counts(self.episode_sums(params, ids_KxB), ids_KxB)


def _counts(stats_G: list[np.ndarray], ids_KxB: np.ndarray) -> tuple[int, int]:
    """(targets predicted, targets scored) of the batches `ids_KxB` from per-episode stats."""
    hit_G, scored_G = stats_G[2:]
    return int(hit_G[ids_KxB].sum()), int(scored_G[ids_KxB].sum())


def batchwise_val_loss(eval_fn, params, source: data.EpisodeBatchSource, position: int,
                       eval_iters: int, mesh, layout: batching.Layout) -> tuple[float, float]:
    """The same two numbers computed the upstream's way, batch by batch (`step.make_eval_step`);
    kept as the reference the tests and `benchmarks/bench_eval.py` compare against."""
    from mypt_jax.data.prefetch import device_batch

    sums = [eval_fn(params, device_batch(source[position + k], mesh, layout, source.pad_id)[0])
            for k in range(eval_iters)]
    s_K, c_K = (np.asarray(x, np.float64) for x in zip(*jax.device_get(sums), strict=True))
    return float((s_K / np.maximum(c_K, 1.0)).mean()), float(s_K.sum() / max(c_K.sum(), 1.0))
