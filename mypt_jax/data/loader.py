"""The training data loader: the upstream episode batch stream, served through grain.

One row is one index entry (an episode, or a block of episodes packed at prepare time by the
newer upstream, with its `segment_ids`/`positions`): its last `block_size + 1` tokens,
right-padded with the eot id and mask 0, shifted into `inputs`/`targets`/`loss_mask` (the
mask, or `mask_weighted.bin`'s weight, of the *target* token weights each prediction).

Epoch mode reproduces the upstream stream exactly. With `G` the valid episodes of a split
(length >= episode_min_tokens, concatenated over shards in shard order) and `N = len(G)`,
stream element i is `G[perm_e[i % N]]` with `e = i // N` and
`perm_e = np.random.RandomState(epoch_seed + e).permutation(N)`; global batch k is stream
elements `[k*B, (k+1)*B)`, so batches straddle epochs. Random mode draws
`RandomState(epoch_seed).randint(0, N, size=B)` once per batch, in order.

Both are random-access by global batch index, so the grain iterator state is just
`{'next_index': k}`: resuming with it (or `start_batch=k`) gives exactly the batches an
uninterrupted iterator would have given. Process p of P gets rows `[p*B/P, (p+1)*B/P)` of
every global batch; the rows of all processes in order are the one-host batch.

With `use_loss_mask=False` the loss mask is all ones, padding included, which is the
upstream's unmasked plain mean over all B*T positions. What the loader refuses to read (a
missing split, a missing mask, a token map that disagrees) is dataset.py's.
"""

from __future__ import annotations

import collections
import sys
import threading
from pathlib import Path
from typing import Any

import grain
import numpy as np

from mypt_jax.data.dataset import EpisodeSplit, check_dataset, dataset_tokenizer
from mypt_jax.data.episodes import DatasetError, segment_positions
from mypt_jax.data.paths import is_remote
from mypt_jax.data.tokenizer import Tokenizer, TokenizerError, head_tokenizer

MODES = ("epoch", "random")
# The stream is endless (epochs repeat); grain needs a length, and any index fits below this.
STREAM_LENGTH = sys.maxsize
# Random mode keeps the numpy RNG state every this many batches, so seeking back replays
# at most this many draws.
_RNG_SNAPSHOT_EVERY = 1024

Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- a run's dataset


def check_for_run(dataset_dir: str, *, use_loss_mask: bool, pack_episodes: bool = False
                  ) -> Tokenizer:
    """What a run reads, checked before anything compiles; returns the dataset's tokenizer."""
    if is_remote(dataset_dir):
        raise DatasetError(
            f"{dataset_dir} is remote, but the episode files are "
            "memory-mapped and must be on a local disk; copy it first (e.g. `gcloud storage cp "
            "-r SRC DIR`, or the launch scripts' `setup --data`) and pass the local directory"
        )
    try:
        check_dataset(dataset_dir, use_loss_mask=use_loss_mask, pack_episodes=pack_episodes)
        return dataset_tokenizer(dataset_dir)
    except (TokenizerError, OSError) as e:
        raise DatasetError(str(e)) from None


def tokenizer_if_any(dataset_dir: str) -> Tokenizer:
    """The dataset's tokenizer where it can be read, else the newer upstream token map."""
    try:
        return dataset_tokenizer(dataset_dir)
    except (DatasetError, TokenizerError, OSError):
        return head_tokenizer()


# ----------------------------------------------------------------------------- stream order


class _EpochOrder:
    """Stream element i -> index into G, with the last two epochs' permutations cached."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self._n, self._seed, self._shuffle = n, seed, shuffle
        self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch in self._perms:
                self._perms.move_to_end(epoch)
                return self._perms[epoch]
        if self._shuffle:
            perm = np.random.RandomState(self._seed + epoch).permutation(self._n)
        else:
            perm = np.arange(self._n)
        with self._lock:
            self._perms[epoch] = perm
            while len(self._perms) > 2:
                self._perms.popitem(last=False)
        return perm

    def __call__(self, elements: np.ndarray) -> np.ndarray:
        epoch_b, pos_b = np.divmod(elements, self._n)
        out = np.empty_like(elements)
        for epoch in np.unique(epoch_b):
            sel = epoch_b == epoch
            out[sel] = self._perm(int(epoch))[pos_b[sel]]
        return out


class _RandomDraws:
    """The upstream's stateful per-batch `randint` draws, made random-access by replaying.

    Draw k depends on all earlier draws (randint rejection-samples), so seeking replays from
    the nearest saved RNG state at or below k. A sequential reader never replays.
    """

    def __init__(self, n: int, seed: int, batch_size: int):
        self._n, self._batch_size = n, batch_size
        self._rng = np.random.RandomState(seed)
        self._next = 0  # the batch the RNG draws next
        self._snapshots = {0: self._rng.get_state()}
        self._recent: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, batch: int) -> np.ndarray:
        with self._lock:
            if batch in self._recent:
                return self._recent[batch]
            if batch < self._next:
                self._next = batch - batch % _RNG_SNAPSHOT_EVERY
                self._rng.set_state(self._snapshots[self._next])
            while self._next <= batch:
                if self._next % _RNG_SNAPSHOT_EVERY == 0:
                    self._snapshots[self._next] = self._rng.get_state()
                self._recent[self._next] = self._rng.randint(0, self._n, size=self._batch_size)
                while len(self._recent) > 64:
                    self._recent.popitem(last=False)
                self._next += 1
            return self._recent[batch]


# ----------------------------------------------------------------------------- batch source


def _load_split(kwargs: dict) -> EpisodeSplit:
    return EpisodeSplit.load(**kwargs)


class EpisodeBatchSource:
    """grain random-access source: item k is this process's rows of the global batch that
    starts at draw k.

    A draw is `draw_rows` stream elements (default: the whole batch, so item k is global
    batch k). The newer upstream's loop draws microbatches (training/setup/semantics.py):
    there a batch is `batch_size / draw_rows` consecutive draws, and its evals take draws
    between two updates' batches.
    """

    def __init__(
        self,
        split: EpisodeSplit,
        *,
        batch_size: int,
        block_size: int,
        epoch_seed: int,
        pad_id: int,
        mode: str = "epoch",
        shuffle: bool = True,
        use_loss_mask: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        split_kwargs: dict | None = None,
        row_stats: bool = False,
        draw_rows: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"batch_sampling_mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size {batch_size} and block_size {block_size} must be >= 1")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size % process_count:
            raise ValueError(
                f"batch_size {batch_size} (global) is not divisible by process_count {process_count}"
            )
        self.split = split
        self.batch_size, self.block_size, self.epoch_seed = batch_size, block_size, epoch_seed
        self.pad_id, self.mode, self.shuffle = pad_id, mode, shuffle
        self.use_loss_mask = use_loss_mask
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = batch_size // process_count
        self.draw_rows = draw_rows or batch_size
        if batch_size % self.draw_rows:
            raise ValueError(f"batch_size {batch_size} is not a multiple of draw_rows {draw_rows}")
        self.row_stats = row_stats
        self._split_kwargs = split_kwargs  # how to reload `split` after pickling
        self._init_order()

    def _init_order(self) -> None:
        self._stats = None  # stats_G(), computed on first use
        n = len(self.split)
        if self.mode == "epoch":
            self._epoch_order = _EpochOrder(n, self.epoch_seed, self.shuffle)
        else:
            self._random_draws = _RandomDraws(n, self.epoch_seed, self.draw_rows)

    def __len__(self) -> int:
        return STREAM_LENGTH

    def global_episode_ids(self, batch: int) -> np.ndarray:
        """Indices into G of every row of the global batch at draw `batch`, all processes'
        in order."""
        if self.mode == "random":
            draws = range(batch, batch + self.batch_size // self.draw_rows)
            return np.concatenate([self._random_draws(k) for k in draws])
        return self._epoch_order(batch * self.draw_rows + np.arange(self.batch_size))

    def episode_ids(self, batch: int) -> np.ndarray:
        """Indices into G of this process's rows of global batch `batch`."""
        lo = self.process_index * self.local_batch_size
        return self.global_episode_ids(batch)[lo:lo + self.local_batch_size]

    def stats_G(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens kept, trained targets) of every valid episode, read from the episode index
        once: what `batching` needs to shape a row, and a run's shape plan, without tokens."""
        if self._stats is None:
            split = self.split
            kept_G = np.minimum(split.length_G, self.block_size + 1).astype(np.int64)
            trained_G = np.maximum(kept_G - 1, 0)
            if self.use_loss_mask:
                end_G = (split.start_G + split.length_G).astype(np.int64)
                for s, shard in enumerate(split.shards):
                    sel = np.flatnonzero(split.shard_G == s)
                    if not len(sel):
                        continue
                    # Nonzero weights among the kept targets (the last kept - 1 tokens):
                    # positions, not the weight sum, since the head needs a slot for each.
                    nonzero_N = np.concatenate([[0], np.cumsum(shard.loss_weights_N != 0)])
                    end = end_G[sel]
                    trained_G[sel] = nonzero_N[end] - nonzero_N[end - trained_G[sel]]
            self._stats = (kept_G.astype(np.int32), trained_G.astype(np.int32))
        return self._stats

    def _row_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Tokens kept and trained targets of every global row (lets every process shape its
        rows for the global batch alone, batching.py)."""
        kept_G, trained_G = self.stats_G()
        return {"global_lengths": kept_G[ids], "global_trained": trained_G[ids]}

    def __getitem__(self, batch: int) -> Batch:
        return self.rows_for(self.global_episode_ids(int(batch)))

    def rows_for(self, global_ids: np.ndarray) -> Batch:
        """This process's rows of a global batch made of episodes `global_ids` (indices into
        G): a row is a pure function of its episode, whichever batch it is in.

        A split packed at prepare time (segment_ids.bin) adds `segment_ids` and `positions`
        (int32[b, T], aligned with `inputs`; padding is segment 0): one index entry is one row
        of several episodes, as in the upstream's loader. `loss_mask` holds the shard's
        mask_weighted.bin weights where it has one.
        """
        L = self.block_size + 1
        split = self.split
        lo = self.process_index * self.local_batch_size
        seq_bxL = np.full((self.local_batch_size, L), self.pad_id, np.int32)
        mask_bxL = np.zeros((self.local_batch_size, L), np.float32)
        seg_bxL = np.zeros((self.local_batch_size, L), np.int32) if split.segmented else None
        for row, g in enumerate(global_ids[lo:lo + self.local_batch_size]):
            shard = split.shards[split.shard_G[g]]
            end = int(split.start_G[g] + split.length_G[g])
            # Keep the last L tokens: a long episode loses its system prompt first.
            n = min(int(split.length_G[g]), L)
            seq_bxL[row, :n] = shard.tokens_N[end - n : end]
            if self.use_loss_mask:
                mask_bxL[row, :n] = shard.loss_weights_N[end - n : end]
            if seg_bxL is not None:
                seg_bxL[row, :n] = shard.segment_ids_N[end - n : end]
        if not self.use_loss_mask:
            mask_bxL[:] = 1.0
        out = {
            "inputs": np.ascontiguousarray(seq_bxL[:, :-1]),
            "targets": np.ascontiguousarray(seq_bxL[:, 1:]),
            "loss_mask": np.ascontiguousarray(mask_bxL[:, 1:]),
        }
        if seg_bxL is not None:
            # The upstream derives both from the ids of the input tokens.
            out["segment_ids"] = np.ascontiguousarray(seg_bxL[:, :-1])
            out["positions"] = segment_positions(out["segment_ids"])
        if self.row_stats:
            out.update(self._row_stats(global_ids))
        return out

    # Memmaps, locks and RNG caches do not travel (grain worker processes): reload instead.
    def __getstate__(self) -> dict:
        if self._split_kwargs is None:
            raise TypeError("EpisodeBatchSource built without split_kwargs cannot be pickled")
        state = {
            k: v for k, v in self.__dict__.items() if not k.startswith("_") or k == "_split_kwargs"
        }
        state.pop("split")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.split = _load_split(self._split_kwargs)
        self._init_order()


def make_source(
    dataset_dir: str | Path,
    split: str,
    *,
    batch_size: int,
    block_size: int,
    epoch_seed: int,
    tokenizer: Tokenizer | None = None,
    mode: str = "epoch",
    episode_min_tokens: int = 2,
    shuffle: bool = True,
    use_loss_mask: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    val_fallback: str | None = None,
    row_stats: bool = False,
    draw_rows: int | None = None,
) -> EpisodeBatchSource:
    """The random-access stream of a split: item k is this process's rows of global batch k.

    `batch_size` is global. Each item is `{"inputs": int32[b, T], "targets": int32[b, T],
    "loss_mask": float32[b, T]}` with b = batch_size / process_count, T = block_size. Items
    are a pure function of k, so a position (the next k) is all a checkpoint needs.

    `tokenizer` defaults to the dataset's tokenizer_state.json; a given one must agree with
    it. `val_fallback="train"` lets a missing val split read the train episodes.
    `row_stats=True` adds `global_lengths`/`global_trained` (int32[batch_size]) for
    `batching.shape_batch`. `draw_rows` (default batch_size) is the unit of k: item k
    starts at stream element k * draw_rows.
    """
    if process_index is None or process_count is None:
        import jax  # only for the defaults; the loader itself is numpy

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    split_kwargs = dict(
        dataset_dir=str(dataset_dir),
        split=split,
        tokenizer=tokenizer,
        episode_min_tokens=episode_min_tokens,
        use_loss_mask=use_loss_mask,
        val_fallback=val_fallback,
    )
    return EpisodeBatchSource(
        _load_split(split_kwargs),
        batch_size=batch_size,
        block_size=block_size,
        epoch_seed=epoch_seed,
        pad_id=dataset_tokenizer(dataset_dir, tokenizer).eot_id,
        mode=mode,
        shuffle=shuffle,
        use_loss_mask=use_loss_mask,
        process_index=process_index,
        process_count=process_count,
        split_kwargs=split_kwargs,
        row_stats=row_stats,
        draw_rows=draw_rows,
    )


def make_iterator(
    dataset_dir: str | Path,
    split: str,
    *,
    start_batch: int = 0,
    read_options: grain.ReadOptions | None = None,
    **source_kwargs,
) -> grain.DatasetIterator:
    """An endless grain iterator over `make_source(dataset_dir, split, **source_kwargs)`.

    The state (`get_state()`, `{'next_index': k}`) is the next global batch. `start_batch`
    starts at global batch k (0 after a resume reproduces the upstream, which restarted its
    loader). The val stream is its own iterator (same `epoch_seed`, as upstream), kept across
    evals. `read_options` defaults to no prefetch threads: a 16x512 batch costs ~0.1 ms on
    one core and threads only added GIL contention (benchmarks/bench_loader.py).
    """
    source = make_source(dataset_dir, split, **source_kwargs)
    options = read_options or grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    iterator = iter(grain.MapDataset.source(source).to_iter_dataset(options))
    if start_batch:
        iterator.set_state({"next_index": int(start_batch)})
    return iterator


# ----------------------------------------------------------------------------- devices


def global_batch(local_batch: Batch, mesh, spec=None) -> dict[str, Any]:
    """Assembles every process's local rows into global `jax.Array`s sharded over the batch.

    Needs a mesh whose batch axes give process p the rows `[p*b, (p+1)*b)`, the rows the
    loader handed it (true for `sharding.make_mesh`, whose device order is process-major).
    """
    import jax
    from jax.sharding import NamedSharding

    from mypt_jax.parallel.sharding import logical_to_spec

    sharding = NamedSharding(mesh, spec if spec is not None else logical_to_spec(("batch", "seq")))
    out = {}
    for name, local in local_batch.items():
        rows = local.shape[0]
        global_shape = (rows * jax.process_count(), *local.shape[1:])
        index_map = sharding.addressable_devices_indices_map(global_shape)
        starts = {idx[0].start or 0 for idx in index_map.values()}
        stops = {
            global_shape[0] if idx[0].stop is None else idx[0].stop for idx in index_map.values()
        }
        first = jax.process_index() * rows
        if min(starts) != first or max(stops) != first + rows:
            raise ValueError(
                f"{name}: this process holds rows [{min(starts)}, {max(stops)}) of the global "
                f"batch under {sharding.spec}, but the loader gave it rows [{first}, {first + rows})"
            )
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out
