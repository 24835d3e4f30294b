"""Batch shaping between the loader and the step: compute only what the loss needs.

The loader serves the upstream layout: one episode per row, right-padded to `block_size`.
On Phase 3a data more than 90% of that is padding, and only a handful of positions per
row are trained. Every function here turns such a batch into a smaller one that gives the
same loss and gradients (up to float summation order):

- **trim**: cut the rows to the longest row of the *global* batch, rounded up to a length
  bucket. Attention is causal and padding sits at the end of a row, so no real position
  ever sees a padded one.
- **trained-position head**: project onto the vocabulary only each row's trained
  positions (`loss_index`, K of them, K from a bucket); untrained positions never reach
  the loss.
- **pack** (opt-in): put the step's episodes into as few rows as fit, with `segment_ids`
  (attention stays inside an episode) and `positions` restarting at 0 per episode.
- **flat head** (opt-in, `flat_head`): the trained positions of all the rows of a data shard
  share the shard's K x rows projection slots (`flat_index`, into the shard's rows laid end
  to end), so K follows the shard's mean trained count per row instead of its busiest row.

Every process computes the bucket from the global batch's row statistics (which the loader
reads from the episode index), so all processes pick the same shapes without talking.
Functions are pure, over numpy arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

Batch = dict[str, np.ndarray]

MIN_LENGTH_BUCKET = 64  # the smallest default length bucket
MIN_POSITION_BUCKET = 8  # the smallest trained-position bucket K
ALL_POSITIONS = -1  # loss_positions value: project every position (no trained-position head)
# Keys the loader adds for shaping (per global row); the step never sees them.
STAT_KEYS = ("global_lengths", "global_trained")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How batches are shaped for the step (see `layout_from_config`)."""

    block_size: int
    length_buckets: tuple[int, ...]  # ascending; the last is block_size
    loss_positions: int  # 0 automatic K; >0 this K unless a batch needs more; -1 all positions
    pack: bool  # pack the step's episodes into as few rows as fit
    row_multiple: int = 1  # packed local rows are a multiple of this (data shards x microbatches)
    flat_groups: int = 0  # >0: flat head over this many groups of local rows (its data shards)
    # The compiled shapes a batch may be padded up to (a run's shape plan); () = exact shapes.
    programs: tuple[BatchShape, ...] = ()

    def flat(self, k: int) -> bool:
        """Whether a batch projecting K = `k` positions per row uses the flat head."""
        return k > 0 and self.flat_groups > 0

    @property
    def per_row(self) -> Layout:
        """This layout with each row's own projection slots (evals sum their loss per row)."""
        return dataclasses.replace(self, flat_groups=0)

    @property
    def padded(self) -> bool:
        """The upstream layout unchanged: every row block_size long, every position projected."""
        return (self.length_buckets == (self.block_size,) and not self.pack
                and self.loss_positions == ALL_POSITIONS)


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """The static shape of a shaped batch: one compiled step per distinct value."""

    rows: int  # global rows
    length: int  # T, positions per row
    positions: int  # K, projected positions per row; 0 = all T (no loss_index)
    packed: bool  # rows carry segment_ids and positions (ours, or packed at prepare time)
    flat: bool = False  # the K x rows slots index each data shard's rows end to end (flat_index)

    def __str__(self) -> str:
        k = f"k{self.positions}" if self.positions else "kall"
        return (f"{self.rows}x{self.length}/{k}" + ("/packed" if self.packed else "")
                + ("/flat" if self.flat else ""))

    @property
    def projected(self) -> int:
        """Positions per row that reach the vocabulary projection."""
        return self.positions or self.length

    def covers(self, other: BatchShape) -> bool:
        """A batch of shape `other` can run padded up to this shape, with the same loss:
        longer rows only add padding (causal attention, mask 0), more projected positions
        only add untrained ones, and more packed rows only empty ones."""
        rows_ok = self.rows >= other.rows if self.packed else self.rows == other.rows
        return (self.packed == other.packed and self.flat == other.flat and rows_ok
                and self.length >= other.length and self.projected >= other.projected)


@dataclasses.dataclass(frozen=True)
class BatchInfo:
    """What one global batch holds, for logs (all counts global)."""

    shape: BatchShape
    real_tokens: int  # positions whose input and target are both episode tokens
    trained_tokens: int  # positions the loss trains on
    padded_positions: int  # positions the upstream layout computes (rows x block_size)

    @property
    def computed_positions(self) -> int:
        return self.shape.rows * self.shape.length


# ----------------------------------------------------------------------------- buckets


def default_length_buckets(block_size: int) -> tuple[int, ...]:
    """Powers of two from 64 up to block_size, and block_size itself."""
    out, n = [], MIN_LENGTH_BUCKET
    while n < block_size:
        out.append(n)
        n *= 2
    return (*out, block_size)


def check_length_buckets(buckets: Sequence[int], block_size: int) -> tuple[int, ...]:
    """The configured buckets, sorted, with block_size added (every batch must fit one)."""
    out = sorted({int(b) for b in buckets})
    bad = [b for b in out if not 1 <= b <= block_size]
    if bad:
        raise ValueError(
            f"length_buckets: {bad} outside [1, block_size={block_size}] (got {list(buckets)})")
    if not out or out[-1] != block_size:
        out.append(block_size)
    return tuple(out)


def position_buckets(length: int) -> tuple[int, ...]:
    """Trained-position counts K a row of `length` may project: powers of two from 8, then length."""
    out, k = [], MIN_POSITION_BUCKET
    while k < length:
        out.append(k)
        k *= 2
    return (*out, length)


def row_buckets(local_rows: int, multiple: int) -> tuple[int, ...]:
    """Packed local row counts: `multiple` times powers of two, up to local_rows rounded up."""
    top = -(-local_rows // multiple) * multiple
    out, r = [], multiple
    while r < top:
        out.append(r)
        r *= 2
    return (*out, top)


def _smallest_fitting(buckets: Sequence[int], need: int) -> int:
    for b in buckets:
        if b >= need:
            return b
    raise ValueError(f"{need} exceeds the largest bucket {buckets[-1]}")


def layout_from_config(config, *, data_shards: int = 1, process_count: int = 1) -> Layout:
    """The layout a training config asks for.

    `data_shards` is the number of batch shards of the mesh (data x fsdp): packed batches
    are padded to a multiple of it. With `use_loss_mask=False` every position is trained,
    padding included (the upstream's plain mean), so the batch keeps its padded layout.
    """
    block_size = int(config.block_size)
    if not config.use_loss_mask:
        return Layout(block_size, (block_size,), ALL_POSITIONS, False)
    buckets = (check_length_buckets(config.length_buckets, block_size)
               if config.length_buckets else default_length_buckets(block_size))
    local_shards = max(data_shards // process_count, 1)
    flat = bool(config.flat_head) and config.loss_positions != ALL_POSITIONS
    if flat and local_shards * process_count != data_shards:  # (grad_accum: config.py)
        raise ValueError(f"flat_head: needs whole data shards per process; got {data_shards} "
                         f"shards over {process_count} processes")
    return Layout(block_size, buckets, int(config.loss_positions), bool(config.pack_episodes),
                  row_multiple=local_shards * int(config.grad_accum_steps),
                  flat_groups=local_shards if flat else 0)


def step_shapes(config, data_shards: int = 1, process_count: int = 1) -> list[BatchShape]:
    """For each length bucket, the largest batch shape a step can see (for ahead-of-time compiles).

    Unpacked rows: all `batch_size` rows, and K the largest the bucket allows. Packed: every
    episode alone in a row is the most rows a step can need.
    """
    layout = layout_from_config(config, data_shards=data_shards, process_count=process_count)
    local = config.batch_size // process_count
    rows = (row_buckets(local, layout.row_multiple)[-1] if layout.pack else local) * process_count
    shapes = []
    for length in layout.length_buckets:
        k = _positions_for(layout, length, need=length)
        shapes.append(BatchShape(rows, length, k, layout.pack, flat=layout.flat(k)))
    return shapes


def abstract_batch(shape: BatchShape):
    """ShapeDtypeStructs of a shaped batch (no sharding), for ahead-of-time compiles."""
    import jax

    def sds(cols, dtype):
        return jax.ShapeDtypeStruct((shape.rows, cols), dtype)

    k = shape.positions or shape.length
    out = {"inputs": sds(shape.length, np.int32), "targets": sds(k, np.int32),
           "loss_mask": sds(k, np.float32)}
    if shape.positions:
        out["flat_index" if shape.flat else "loss_index"] = sds(k, np.int32)
    if shape.packed:
        out["positions"] = sds(shape.length, np.int32)
        out["segment_ids"] = sds(shape.length, np.int32)
    return out


def _positions_for(layout: Layout, length: int, need: int) -> int:
    """K for rows of `length` whose busiest row trains `need` tokens; 0 = project all."""
    if layout.loss_positions == ALL_POSITIONS:
        return 0
    if 0 < layout.loss_positions and need <= layout.loss_positions:
        k = layout.loss_positions  # the fixed override, while it can serve the batch
    else:
        k = _smallest_fitting(position_buckets(length), need)
    return 0 if k >= length else k


# ----------------------------------------------------------------------------- shaping


def natural_shape(lengths_G, trained_G, layout: Layout, *, local_rows: int, process_count: int = 1,
                  prepacked: bool = False) -> BatchShape:
    """The exact shape of a global batch from its row statistics (no tokens needed)."""
    real_G = np.maximum(np.asarray(lengths_G, np.int64) - 1, 0)
    return _shape_and_packing(real_G, np.asarray(trained_G, np.int64), layout, local_rows,
                              process_count, prepacked)[0]


def _shape_and_packing(real_G, trained_G, layout: Layout, b: int, process_count: int,
                       prepacked: bool) -> tuple[BatchShape, list | None]:
    """The exact shape, and every process's bins when the layout packs (else None)."""
    if layout.pack and not prepacked:
        length, rows, plans = _pack_plan(real_G, layout, b, process_count)
        # Each process's rows: its bins' trained counts, then empty rows up to the bucket.
        row_trained_G = np.concatenate([
            [int(trained_G[p * b + np.asarray(m)].sum()) for m in plan] + [0] * (rows - len(plan))
            for p, plan in enumerate(plans)])
        k = _head_positions(layout, length, row_trained_G, process_count)
        return BatchShape(rows * process_count, length, k, True, flat=layout.flat(k)), plans
    length = _smallest_fitting(layout.length_buckets, int(real_G.max(initial=0)))
    k = _head_positions(layout, length, trained_G, process_count)
    return BatchShape(b * process_count, length, k, prepacked, flat=layout.flat(k)), None


def _head_positions(layout: Layout, length: int, row_trained_G, process_count: int) -> int:
    """K for rows that train `row_trained_G` targets each: the busiest row's count, or with a
    flat head the most any data shard needs per row (its trained total over its rows)."""
    need = int(np.max(row_trained_G, initial=0))
    if layout.flat_groups:
        per_group = np.asarray(row_trained_G).reshape(layout.flat_groups * process_count, -1)
        need = int((-(-per_group.sum(axis=1) // per_group.shape[1])).max(initial=0))
    return _positions_for(layout, length, need)


def fit_program(shape: BatchShape, programs: Sequence[BatchShape]) -> BatchShape:
    """The first of `programs` (a plan lists them cheapest first) that covers `shape`, else
    `shape` itself (a shape outside the plan: the run compiles it and warns)."""
    return next((p for p in programs if p.covers(shape)), shape)


def shape_batch(local: Batch, layout: Layout, *, pad_id: int = 0, process_index: int = 0,
                process_count: int = 1) -> tuple[Batch, BatchInfo]:
    """The loader's padded local rows (with `global_lengths`/`global_trained`) -> the step's batch.

    `global_lengths[i]` is the number of tokens the loader kept of global row i's episode
    (at most block_size + 1), `global_trained[i]` its trained targets; process p's rows are
    global rows [p*b, (p+1)*b). `pad_id` fills packed rows past their last episode. Rows
    packed at prepare time (with `segment_ids`) are trimmed and headed, never packed again.
    With `layout.programs` the batch is padded up to the first program that covers it.
    """
    lengths_G = np.asarray(local["global_lengths"], np.int64)
    trained_G = np.asarray(local["global_trained"], np.int64)
    rows = {k: v for k, v in local.items() if k not in STAT_KEYS}
    b = rows["inputs"].shape[0]
    if len(lengths_G) != b * process_count:
        raise ValueError(f"global_lengths: {len(lengths_G)} rows, expected {b} x {process_count}")
    # An episode of n tokens gives n - 1 (input, target) pairs; the rest of the row is padding.
    real_G = np.maximum(lengths_G - 1, 0)
    stats = dict(real_tokens=int(real_G.sum()), trained_tokens=int(trained_G.sum()),
                 padded_positions=b * process_count * layout.block_size)
    prepacked = "segment_ids" in rows  # a dataset packed at prepare time (segment_ids.bin)
    if layout.pack and prepacked:
        raise ValueError("pack_episodes: the rows were packed at prepare time (the dataset has "
                         "segment_ids.bin) and cannot be packed again; set pack_episodes=False")
    exact, plans = _shape_and_packing(real_G, trained_G, layout, b, process_count, prepacked)
    shape = fit_program(exact, layout.programs)
    if plans is not None:
        mine = real_G[process_index * b:(process_index + 1) * b]
        out = place(plans[process_index], mine, rows, shape.rows // process_count, shape.length,
                    fill={"inputs": pad_id, "targets": pad_id})
    else:
        # Trimming keeps every segment id and position of the columns it keeps.
        out = {name: x[:, :shape.length] for name, x in rows.items()}
    if shape.positions and shape.flat:
        out = gather_flat(out, shape.positions, layout.flat_groups)
    elif shape.positions:
        out = gather_trained(out, shape.positions)
    return out, BatchInfo(shape, **stats)


def shape_of(batch: Batch) -> BatchShape:
    """The BatchShape of a shaped batch (host or device arrays)."""
    rows, length = batch["inputs"].shape
    index = batch.get("loss_index", batch.get("flat_index"))
    return BatchShape(rows, length, 0 if index is None else index.shape[1], "segment_ids" in batch,
                      flat="flat_index" in batch)


def trained_index(mask_BxT: np.ndarray, k: int) -> np.ndarray:
    """Per row, the positions of its trained targets in order, then untrained ones: [B, k]."""
    order_BxT = np.argsort(~(mask_BxT > 0), axis=1, kind="stable")
    return order_BxT[:, :k].astype(np.int32)


def gather_trained(batch: Batch, k: int) -> Batch:
    """Targets and mask at each row's first k trained positions, and those positions."""
    most = int((batch["loss_mask"] > 0).sum(axis=1).max(initial=0))
    if most > k:
        raise ValueError(f"a row trains on {most} targets, more than the {k} positions projected")
    index_BxK = trained_index(batch["loss_mask"], k)
    out = dict(batch)
    out["targets"] = np.take_along_axis(batch["targets"], index_BxK, axis=1)
    out["loss_mask"] = np.take_along_axis(batch["loss_mask"], index_BxK, axis=1)
    out["loss_index"] = index_BxK
    return out


def gather_flat(batch: Batch, k: int, groups: int) -> Batch:
    """The flat head's batch: each of `groups` blocks of rows (a data shard's) lays its rows end
    to end and fills its rows x k slots with its trained positions in order (`flat_index`, into
    those laid-out positions), then untrained ones; targets and mask follow."""
    rows, length = batch["loss_mask"].shape
    g = rows // groups
    mask_GxM = batch["loss_mask"].reshape(groups, g * length)
    most = int((mask_GxM > 0).sum(axis=1).max(initial=0))
    if most > g * k:
        raise ValueError(f"a shard trains on {most} targets, more than its {g} x {k} slots")
    index_GxN = trained_index(mask_GxM, g * k)
    out = dict(batch)
    for name in ("targets", "loss_mask"):
        flat_GxM = batch[name].reshape(groups, g * length)
        out[name] = np.take_along_axis(flat_GxM, index_GxN, axis=1).reshape(rows, k)
    out["flat_index"] = index_GxN.reshape(rows, k)
    return out


def first_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Items (by index, in order) into bins of `capacity`: each goes into the first that fits."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i, size in enumerate(sizes):
        for j, room in enumerate(free):
            if size <= room:
                bins[j].append(i)
                free[j] -= size
                break
        else:
            bins.append([i])
            free.append(capacity - size)
    return bins


def _pack_plan(real_G, layout: Layout, b: int, process_count: int):
    """(row length, local rows, every process's bins) of the cheapest packing.

    Rows may be as long as any length bucket that holds the longest episode; a longer row
    needs fewer rows but costs more attention per row. We take the length whose bucketed
    rows x length is smallest (the shorter on a tie). Every process packs every process's
    episodes (cheap), so all agree on the shape.
    """
    def per_process(x):
        return [x[p * b:(p + 1) * b] for p in range(process_count)]

    best = None
    longest = int(real_G.max(initial=0))
    for length in (n for n in layout.length_buckets if n >= longest):
        plans = [first_fit(sizes, length) for sizes in per_process(real_G)]
        rows = _smallest_fitting(row_buckets(b, layout.row_multiple),
                                 max(len(plan) for plan in plans))
        if best is None or rows * length < best[0] * best[1]:
            best = (rows, length, plans)
    rows, length, plans = best
    return length, rows, plans


def place(plan: list[list[int]], sizes: Sequence[int], items: Batch, rows: int, length: int,
          fill: dict[str, int] | None = None) -> Batch:
    """Lays items side by side into rows as `plan` says, with `positions` and `segment_ids`.

    Item i is `items[name][i, :sizes[i]]` for every name. Segment ids count 1, 2, ... within a
    row and 0 marks padding (filled with `fill[name]`, default 0); positions restart at 0 in
    every segment.
    """
    fill = fill or {}
    out = {name: np.full((rows, length), fill.get(name, 0), x.dtype) for name, x in items.items()}
    positions = np.zeros((rows, length), np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    for r, members in enumerate(plan):
        at = 0
        for seg, i in enumerate(members, start=1):
            n = int(sizes[i])
            for name, x in items.items():
                out[name][r, at:at + n] = x[i, :n]
            positions[r, at:at + n] = np.arange(n, dtype=np.int32)
            segment_ids[r, at:at + n] = seg
            at += n
    return {**out, "positions": positions, "segment_ids": segment_ids}
