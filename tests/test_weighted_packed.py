"""The newer upstream's optional shard files: segment_ids.bin (episodes packed at prepare time)
and mask_weighted.bin (float32 loss weights), read with its meaning or refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import train_helpers

from mypt_jax.data import batching, episodes
from mypt_jax.data import loader as data
from mypt_jax.data.episodes import DatasetError
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.interop import upstream
from mypt_jax.model import ModelConfig
from mypt_jax.training.step import train_step as ts
from tests.torch_reference import (
    Cfg,
    TorchGPT,
    upstream_positions,
    upstream_weighted_loss,
)

EOT = 50271  # the dataset tokenizer's eot id: the loader's pad
BLOCK = 32  # rows keep block_size + 1 = 33 tokens
LENGTHS = (5, 9, 14, 7, 11, 6, 20, 8, 12, 10, 15, 9)
ARCH = dict(block_size=BLOCK, vocab_size=50304, n_embd=32, n_head=4, n_layer=2, dropout=0.0,
            bias=False, tie_weights=True)
HEAD_ARCH = dict(pos_encoding="rope", mlp_type="swiglu", norm_type="rmsnorm")

Row = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]  # tokens, mask, weights, ids


# ----------------------------------------------------------------------------- shards


def _episodes(seed: int = 0) -> list[Row]:
    """Chat-like episodes: an untrained prompt (so an episode's first token, the one a packed
    row's previous segment predicts, is never trained), then weights 1, 1.5 or 2, eot last."""
    rng = np.random.RandomState(seed)
    out = []
    for n in LENGTHS:
        tokens = rng.randint(0, 50257, size=n).astype(np.uint32)
        tokens[-1] = EOT
        mask = (np.arange(n) >= n // 2).astype(np.uint8)
        weights = (mask * rng.choice([1.0, 1.5, 2.0], size=n)).astype(np.float32)
        out.append((tokens, mask, weights, None))
    return out


def _pack(rows: list[Row], size: int) -> list[Row]:
    """The upstream's greedy packing: episodes in order into blocks of exactly `size` tokens,
    segment ids 1, 2, ... per block, the rest eot with mask 0 and segment 0."""
    blocks: list[list[Row]] = [[]]
    for row in rows:
        if sum(len(r[0]) for r in blocks[-1]) + len(row[0]) > size:
            blocks.append([])
        blocks[-1].append(row)
    out = []
    for members in blocks:
        pad = size - sum(len(r[0]) for r in members)
        tokens = np.concatenate([*(r[0] for r in members), np.full(pad, EOT, np.uint32)])
        mask = np.concatenate([*(r[1] for r in members), np.zeros(pad, np.uint8)])
        weights = np.concatenate([*(r[2] for r in members), np.zeros(pad, np.float32)])
        ids = np.concatenate([*(np.full(len(r[0]), s, np.uint8)
                                for s, r in enumerate(members, start=1)), np.zeros(pad, np.uint8)])
        out.append((tokens, mask, weights, ids))
    return out


def _write_shard(path: Path, rows: list[Row], *, weights: bool) -> Path:
    episodes.write_shard(path, [(r[0], r[1]) for r in rows])
    if weights:
        np.concatenate([r[2] for r in rows]).astype("<f4").tofile(path / episodes.WEIGHTS_FILE)
    if rows[0][3] is not None:
        np.concatenate([r[3] for r in rows]).astype(np.uint8).tofile(
            path / episodes.SEGMENT_IDS_FILE)
    return path


def _dataset(root: Path, rows: list[Row], *, weights: bool = False) -> Path:
    for split in episodes.SPLITS:
        _write_shard(root / split, rows, weights=weights)
    Tokenizer().save(root / episodes.TOKENIZER_STATE_FILE)
    return root


def _upstream_rows(rows: list[Row], weighted: bool) -> dict[str, np.ndarray]:
    """The newer upstream loader's (x, y, mask_y, seg_x) of each index entry, in order."""
    L = BLOCK + 1
    out: dict[str, list] = {"x": [], "y": [], "m": [], "seg": []}
    for tokens, mask, weights, ids in rows:
        keep = slice(max(len(tokens) - L, 0), None)  # the last L tokens
        pad = L - len(tokens[keep])
        seq = np.pad(tokens[keep].astype(np.int64), (0, pad), constant_values=EOT)
        m = np.pad((weights if weighted else mask)[keep].astype(np.float32), (0, pad))
        out["x"].append(seq[:-1])
        out["y"].append(seq[1:])
        out["m"].append(m[1:])
        if ids is not None:
            out["seg"].append(np.pad(ids[keep].astype(np.int64), (0, pad))[:-1])
    return {k: np.stack(v) for k, v in out.items() if v}


def _one_batch(root: Path, **kw) -> dict[str, np.ndarray]:
    """Every index entry of the train split in one batch, in file order."""
    n = len(data.EpisodeSplit.load(root, "train", **kw))
    source = data.make_source(root, "train", batch_size=n, block_size=BLOCK, epoch_seed=0,
                              shuffle=False, process_index=0, process_count=1, row_stats=True,
                              **kw)
    return source[0]


def _layouts() -> dict[str, batching.Layout]:
    return {"padded": batching.Layout(BLOCK, (BLOCK,), batching.ALL_POSITIONS, False),
            "trimmed+head": batching.Layout(BLOCK, (8, 16, BLOCK), 0, False)}


# ----------------------------------------------------------------------------- the model


def _models(generation: str):
    kw = {**ARCH, **(HEAD_ARCH if generation == "head" else {})}
    ref = TorchGPT(Cfg(**kw)).randomize_(5).eval()
    cfg = ModelConfig.from_upstream(kw)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params, _ = upstream.params_from_state_dict(sd, cfg, "test")
    return ref, ts.model_def(cfg), jax.tree.map(jnp.asarray, params)


def _loss(mdef, params, batch) -> tuple[float, float]:
    """(the step's loss, its normaliser): sum(w * CE) / max(sum(w), 1) and sum(w)."""
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k not in batching.STAT_KEYS}
    s, c = jax.jit(lambda p, b: ts._loss_sums(mdef, p, b, None, 0))(params, batch)
    return float(s) / max(float(c), 1.0), float(c)


def _torch_loss(ref, rows: dict[str, np.ndarray]) -> float:
    seg = torch.from_numpy(rows["seg"]) if "seg" in rows else None
    with torch.no_grad():
        return float(upstream_weighted_loss(ref, torch.from_numpy(rows["x"]),
                                            torch.from_numpy(rows["y"]),
                                            torch.from_numpy(rows["m"]), seg))


# ----------------------------------------------------------------------------- tests


def test_positions_restart_where_the_segment_id_changes():
    ids = np.array([[1, 1, 1, 2, 2, 1, 1, 0, 0], [3, 3, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(episodes.segment_positions(ids),
                                  [[0, 1, 2, 0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 2, 3, 4, 5, 6]])
    rng = np.random.RandomState(1)
    ids = np.sort(rng.randint(0, 4, size=(6, 40)), axis=1)[:, ::-1].copy()
    np.testing.assert_array_equal(episodes.segment_positions(ids),
                                  upstream_positions(torch.from_numpy(ids)).numpy())


@pytest.mark.parametrize("pack_size", [BLOCK, BLOCK + 9])  # whole blocks, and cut from the left
def test_packed_rows_are_the_upstream_rows(tmp_path, pack_size):
    packed = _pack(_episodes(), pack_size)
    root = _dataset(tmp_path, packed, weights=True)
    batch = _one_batch(root)
    want = _upstream_rows(packed, weighted=True)
    np.testing.assert_array_equal(batch["inputs"], want["x"])
    np.testing.assert_array_equal(batch["targets"], want["y"])
    np.testing.assert_array_equal(batch["loss_mask"], want["m"])
    np.testing.assert_array_equal(batch["segment_ids"], want["seg"])
    np.testing.assert_array_equal(batch["positions"],
                                  upstream_positions(torch.from_numpy(want["seg"])).numpy())
    assert want["seg"].max() > 1  # the rows really hold several episodes
    # the trained-position head needs a slot per weighted target, not the weight sum
    np.testing.assert_array_equal(batch["global_trained"], (want["m"] > 0).sum(axis=1))
    assert (batch["global_trained"] < want["m"].sum(axis=1)).any()


@pytest.mark.parametrize("generation", ["seed", "head"])
def test_packed_shard_gives_the_unpacked_loss(tmp_path, generation):
    eps = _episodes()
    unpacked = _one_batch(_dataset(tmp_path / "unpacked", eps))
    packed = _one_batch(_dataset(tmp_path / "packed", _pack(eps, BLOCK)))
    assert len(packed["inputs"]) < len(unpacked["inputs"])
    ref, mdef, params = _models(generation)
    want, count = _loss(mdef, params, batching.shape_batch(unpacked, _layouts()["padded"])[0])
    for name, layout in _layouts().items():
        shaped, info = batching.shape_batch(packed, layout, pad_id=EOT)
        assert info.shape.packed and "segment_ids" in shaped and "positions" in shaped
        got, got_count = _loss(mdef, params, shaped)
        assert got_count == count == sum(int(e[1][1:].sum()) for e in eps)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    # the upstream's own forward over its packed rows gives the same loss
    theirs = _torch_loss(ref, _upstream_rows(_pack(eps, BLOCK), weighted=False))
    np.testing.assert_allclose(theirs, want, rtol=1e-5)
    # read as before this change (ids dropped), packed episodes would see each other
    blind = {k: v for k, v in packed.items() if k not in ("segment_ids", "positions")}
    assert abs(_loss(mdef, params, blind)[0] - want) > 1e-3


@pytest.mark.parametrize(("packed", "mask_bin"), [(False, True), (True, True), (False, False)])
def test_weighted_mask_gives_the_upstream_weighted_loss(tmp_path, packed, mask_bin):
    rows = _pack(_episodes(), BLOCK) if packed else _episodes()
    root = _dataset(tmp_path, rows, weights=True)
    if not mask_bin:  # the upstream needs no mask.bin beside the weights
        (root / "train" / episodes.MASK_FILE).unlink()
    batch = _one_batch(root)
    upstream_rows = _upstream_rows(rows, weighted=True)
    np.testing.assert_array_equal(batch["loss_mask"], upstream_rows["m"])
    ref, mdef, params = _models("seed")
    theirs = _torch_loss(ref, upstream_rows)
    for name, layout in _layouts().items():
        loss, count = _loss(mdef, params, batching.shape_batch(batch, layout, pad_id=EOT)[0])
        assert count == pytest.approx(float(upstream_rows["m"].sum()))
        np.testing.assert_allclose(loss, theirs, rtol=1e-5, err_msg=name)
    # the weights matter: the 0/1 mask gives another loss
    plain = _torch_loss(ref, _upstream_rows(rows, weighted=False))
    assert abs(plain - theirs) > 1e-3


def test_all_zero_weights_train_on_no_token(tmp_path, caplog):
    """The issue's case: a prepared alpha-like dataset, an all-zero mask_weighted.bin and a
    segment_ids.bin beside every shard. The upstream trains on no token (loss 0 / max(0, 1))."""
    root = train_helpers.make_dataset(tmp_path, n=40)
    for split in episodes.SPLITS:
        for shard in episodes.read_split(root / split):
            n = shard.tokens_N.size
            np.zeros(n, "<f4").tofile(shard.path / episodes.WEIGHTS_FILE)
            ids = np.zeros(n, np.uint8)
            for s, (start, length) in enumerate(shard.episodes_Ex2.astype(np.int64)):
                ids[start:start + length] = 1 + s % 3  # each entry one segment
            ids.tofile(shard.path / episodes.SEGMENT_IDS_FILE)
    with caplog.at_level(logging.WARNING):
        data.check_dataset(root)
    mask_file = episodes.read_split(root / "train")[0].path / episodes.MASK_FILE
    assert str(mask_file) in caplog.text  # mask.bin goes unused, and the log says so
    batch = _one_batch(root)
    assert not batch["loss_mask"].any() and not batch["global_trained"].any()
    assert "segment_ids" in batch
    _, mdef, params = _models("seed")
    shaped, info = batching.shape_batch(batch, _layouts()["trimmed+head"], pad_id=EOT)
    assert info.trained_tokens == 0 and info.shape.packed

    def loss(p):
        s, c = ts._loss_sums(mdef, p, jax.tree.map(jnp.asarray, shaped), None, 0)
        return s / jnp.maximum(c, 1.0), c

    (value, count), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert float(value) == 0.0 and float(count) == 0.0
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_trainer_runs_a_packed_weighted_dataset(tmp_path):
    from mypt_jax.training import trainer
    from mypt_jax.training.setup.config import ConfigError

    root = _dataset(tmp_path / "ds", _pack(_episodes(), BLOCK), weights=True)
    c = train_helpers.tiny_config(root, tmp_path / "run", block_size=BLOCK, log_interval=1,
                                  max_iters=3, eval_interval=2, eval_iters=1,
                                  eval_prompts_file="", n_layer=1, warmup_iters=0)
    trainer.train(c)
    log = train_helpers.read_log(tmp_path / "run" / "log.jsonl")
    steps = [r for r in log if "train_loss" in r]
    assert len(steps) == 3 and all(r["buckets"][-1].endswith("/packed") for r in steps)
    assert all(np.isfinite(r["train_loss"]) and r["loss_tokens"] > 0 for r in steps)
    with pytest.raises(ConfigError, match=episodes.SEGMENT_IDS_FILE):
        trainer.train(train_helpers.tiny_config(root, tmp_path / "run2", block_size=BLOCK,
                                                use_loss_mask=False, eval_prompts_file=""))


def _two_shards(root: Path) -> Path:
    rows = _pack(_episodes(), BLOCK)
    for s in range(2):
        _write_shard(episodes.shard_dir(root / "train", s), rows, weights=True)
    _write_shard(root / "val", rows, weights=True)
    Tokenizer().save(root / episodes.TOKENIZER_STATE_FILE)
    return root


def _seg_path(root: Path) -> Path:
    return episodes.shard_dir(root / "train", 1) / episodes.SEGMENT_IDS_FILE


def _weights_path(root: Path) -> Path:
    return episodes.shard_dir(root / "train", 1) / episodes.WEIGHTS_FILE


def _rewrite(path: Path, convert) -> None:
    raw = np.fromfile(path, np.uint8 if path.name == episodes.SEGMENT_IDS_FILE else "<f4")
    convert(raw).tofile(path)


def _set_weight(value: float):
    def convert(w):
        w = w.copy()
        w[7] = value
        return w
    return convert


MALFORMED = {
    "segment ids as int32": (_seg_path, lambda a: a.astype("<i4"), "4 bytes per token"),
    "segment ids one short": (_seg_path, lambda a: a[:-1], "expected"),
    "weights as float64": (_weights_path, lambda a: a.astype("<f8"), "8 bytes per token"),
    "weights as uint8": (_weights_path, lambda a: a.astype(np.uint8), "1 bytes per token"),
    "weights one short": (_weights_path, lambda a: a[:-1], "expected"),
    "negative weight": (_weights_path, _set_weight(-1.0), "weight -1.0 at token 7"),
    "nan weight": (_weights_path, _set_weight(float("nan")), "weight nan at token 7"),
    "segment ids in one shard only": (_seg_path, None, "missing"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_refused_in_one_line_naming_the_file(tmp_path, case):
    where, convert, what = MALFORMED[case]
    root = _two_shards(tmp_path)
    data.check_dataset(root)  # well formed before the damage
    path = where(root)
    if convert is None:
        (episodes.shard_dir(root / "train", 0) / episodes.SEGMENT_IDS_FILE).unlink()
    else:
        _rewrite(path, convert)
    for read in (lambda: data.check_dataset(root), lambda: _one_batch(root)):
        with pytest.raises(DatasetError) as err:
            read()
        message = str(err.value)
        assert "\n" not in message and what in message, message
        named = path if convert is not None else path.parent.parent / "shard_00000" / path.name
        assert message.startswith(f"{named}:"), message


def test_what_cannot_be_matched_is_refused(tmp_path, caplog):
    root = _two_shards(tmp_path)
    seg = episodes.shard_dir(root / "train", 0) / episodes.SEGMENT_IDS_FILE
    # without the loss mask the upstream drops the ids: packed episodes would see each other
    with pytest.raises(DatasetError, match=f"^{seg}: .*use_loss_mask=True"):
        data.check_dataset(root, use_loss_mask=False)
    # our packing over rows already packed would merge their segments
    with pytest.raises(DatasetError, match=f"^{seg}: .*pack_episodes"):
        data.check_dataset(root, pack_episodes=True)
    batch = _one_batch(root)
    with pytest.raises(ValueError, match="pack_episodes.*segment_ids.bin"):
        batching.shape_batch(batch, batching.Layout(BLOCK, (BLOCK,), 0, True), pad_id=EOT)
    # weights without segment ids and without the loss mask: unread like mask.bin, and said so
    for path in root.rglob(episodes.SEGMENT_IDS_FILE):
        path.unlink()
    with caplog.at_level(logging.WARNING):
        batch = _one_batch(root, use_loss_mask=False)
    assert str(_weights_path(root)) in caplog.text and "not read" in caplog.text
    assert (batch["loss_mask"] == 1).all() and "segment_ids" not in batch
