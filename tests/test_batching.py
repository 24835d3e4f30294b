"""Batch shaping: trimmed, trained-position and packed batches give the padded batch's loss."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mypt_jax.data import batching
from mypt_jax.data import loader as data
from mypt_jax.data.prepare import prepare
from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training.step import train_step as ts

BLOCK = 32
WORDS = "apple blue cat door egg fish green house ice jam kite lamp moon nest owl pear".split()


def _dataset(tmp_path, lengths):
    """Episodes whose user turns hold `n` words each: short, long, and over block_size + 1."""
    path = tmp_path / "chat.jsonl"
    with path.open("w") as f:
        for i, n in enumerate(lengths):
            words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))
            answer = " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(1 + 3 * (i % 4)))
            f.write(json.dumps({"messages": [{"role": "user", "content": words},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    out = tmp_path / "ds"
    prepare(path, out, val_split=0.0, progress=False)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(block_size, two loader batches of 4 rows): short rows, then long ones.

    block_size is picked so that one episode of the second batch has exactly block_size + 1
    tokens (the longest row the loader keeps whole) and another is longer (cut from the left).
    """
    ds = _dataset(tmp_path_factory.mktemp("batching"), [1, 2, 4, 6, 9, 12, 30, 40])
    lengths = np.sort(data.EpisodeSplit.load(ds, "train").length_G)
    block = int(lengths[-2]) - 1
    it = data.make_iterator(ds, "train", batch_size=4, block_size=block, epoch_seed=3,
                            process_index=0, process_count=1, row_stats=True, shuffle=False)
    batches = [next(it), next(it)]
    it.close()
    return block, batches


def _layout(block, pack=False, positions=0, buckets=None, row_multiple=1, flat_groups=0):
    return batching.Layout(block, buckets or (8, 16, 32, 48, block), positions, pack, row_multiple,
                           flat_groups)


def test_loader_row_stats_describe_the_padded_rows(setup):
    block, batches = setup
    kept = np.concatenate([b["global_lengths"] for b in batches])
    assert kept.max() == block + 1 and (kept == block + 1).sum() == 2  # one whole, one cut
    assert kept.min() < block // 2 + 8
    for b in batches:
        assert (b["global_trained"] == b["loss_mask"].sum(axis=1)).all()
        for row, n in enumerate(b["global_lengths"]):  # real pairs end where padding starts
            assert (b["loss_mask"][row, n - 1:] == 0).all()


def test_default_buckets():
    assert batching.default_length_buckets(512) == (64, 128, 256, 512)
    assert batching.default_length_buckets(40) == (40,)
    assert batching.default_length_buckets(100) == (64, 100)
    assert batching.position_buckets(40) == (8, 16, 32, 40)
    assert batching.check_length_buckets((16, 8), 32) == (8, 16, 32)
    with pytest.raises(ValueError, match="outside"):
        batching.check_length_buckets((0, 64), 32)


def test_trim_cuts_to_the_bucket_of_the_longest_row(setup):
    block, (short, _) = setup
    out, info = batching.shape_batch(short, _layout(block))
    longest = int(short["global_lengths"].max()) - 1
    bucket = min(b for b in (8, 16, 32, 48, block) if b >= longest)
    assert info.shape.length == bucket < block and out["inputs"].shape == (4, bucket)
    assert info.padded_positions == 4 * block and info.real_tokens == (short["global_lengths"] - 1).sum()


def test_k_falls_back_to_a_larger_bucket_and_never_fails(setup):
    block, (_, long) = setup
    most = int(long["global_trained"].max())
    assert most > 8
    out, info = batching.shape_batch(long, _layout(block, positions=2))  # a fixed K too small
    assert info.shape.positions == 16 >= most and out["loss_index"].shape == (4, 16)
    b = {k: v.copy() for k, v in long.items()}
    b["loss_mask"][0, :] = 1  # one row trains on every position: the head projects them all
    b["global_trained"][0] = block
    out, info = batching.shape_batch(b, _layout(block))
    assert info.shape.positions == 0 and "loss_index" not in out


def test_packing_every_process_picks_the_same_shape(setup):
    block, (short, _) = setup
    shapes = []
    for p in range(2):
        local = {k: (v if k in batching.STAT_KEYS else v[p * 2:(p + 1) * 2])
                 for k, v in short.items()}
        out, info = batching.shape_batch(local, _layout(block, pack=True, row_multiple=1),
                                         pad_id=7, process_index=p, process_count=2)
        shapes.append(info.shape)
        assert out["inputs"].shape[0] * 2 == info.shape.rows
        assert out["loss_mask"].sum() == local["loss_mask"].sum()  # no trained target lost
        seg = out["segment_ids"]
        for r in range(seg.shape[0]):  # positions restart at 0 in every segment
            for s in np.unique(seg[r][seg[r] > 0]):
                np.testing.assert_array_equal(out["positions"][r][seg[r] == s],
                                              np.arange((seg[r] == s).sum()))
            assert (out["inputs"][r][seg[r] == 0] == 7).all()
    assert shapes[0] == shapes[1]


def test_first_fit():
    assert batching.first_fit([20, 20, 10, 5, 30], 32) == [[0, 2], [1, 3], [4]]


def _loss_and_grads(cfg, params, batch, mesh=None):
    mdef = ts.model_def(cfg)
    if mesh is not None:
        batch = data.global_batch(batch, mesh)

    def f(p):
        s, c = ts._loss_sums(mdef, p, jax.tree.map(jnp.asarray, batch), None, 0, mesh)
        return s / c

    return jax.jit(jax.value_and_grad(f))(params)


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["seed", "head"])
def test_padded_trimmed_packed_give_one_loss_and_gradient(setup, generation):
    block, batches = setup
    cfg = ModelConfig(block_size=block, vocab_size=50304, n_embd=32, n_head=4, n_layer=2,
                      dropout=0.0)
    if generation == "head":
        cfg = cfg.replace(pos_encoding="rope", mlp_type="swiglu", norm_type="rmsnorm")
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, params = ts.init_model(cfg, mesh, seed=1)
    padded = batching.Layout(block, (block,), batching.ALL_POSITIONS, False)
    layouts = {"trimmed": _layout(block, positions=batching.ALL_POSITIONS),
               "trimmed+head": _layout(block),
               # one long bucket: the cheapest packing then puts two episodes in a row
               "packed+head": _layout(block, pack=True, buckets=(8, 16, 32, block)),
               "trimmed+flat": _layout(block, flat_groups=1)}
    for loader_batch in batches:
        ref_loss, ref_grads = _loss_and_grads(
            cfg, params, batching.shape_batch(loader_batch, padded)[0])
        for name, layout in layouts.items():
            batch, info = batching.shape_batch(loader_batch, layout, pad_id=50256)
            loss, grads = _loss_and_grads(cfg, params, batch)
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=name)
            jax.tree.map(lambda a, b, n=name: np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-6, err_msg=n), grads, ref_grads)
    packed, _ = batching.shape_batch(batches[0], layouts["packed+head"])
    assert packed["segment_ids"].max() > 1  # a row really holds two episodes


def test_flat_head_slots_follow_the_shards_mean_not_the_busiest_row(setup):
    block, batches = setup
    b = batches[1]
    trained = b["global_trained"]
    per_row = batching.shape_batch(b, _layout(block))[0]
    flat, info = batching.shape_batch(b, _layout(block, flat_groups=2), pad_id=50256)
    assert info.shape.flat and str(info.shape).endswith("/flat")
    k = info.shape.positions
    need = max(-(-int(trained[:2].sum()) // 2), -(-int(trained[2:].sum()) // 2))
    assert k == min(x for x in batching.position_buckets(info.shape.length) if x >= need)
    one = batching.shape_batch(b, _layout(block, flat_groups=1))[1].shape  # one shard: the mean
    assert one.positions == 8 < per_row["loss_index"].shape[1] == 16, trained  # 32/4 vs 13
    assert set(flat) == set(per_row) - {"loss_index"} | {"flat_index"}
    assert flat["targets"].shape == flat["flat_index"].shape == (4, k)
    length = info.shape.length
    for g in range(2):  # each shard's slots hold its own trained targets, in order
        rows = slice(2 * g, 2 * g + 2)
        want = per_row["targets"][rows][per_row["loss_mask"][rows] > 0]
        got = flat["targets"][rows].reshape(-1)[flat["loss_mask"][rows].reshape(-1) > 0]
        np.testing.assert_array_equal(got, want)
        at = flat["flat_index"][rows].reshape(-1)[flat["loss_mask"][rows].reshape(-1) > 0]
        assert at.max() < 2 * length
        inputs = flat["inputs"][rows]
        np.testing.assert_array_equal(  # the slot's position predicts its target
            b["targets"][rows, :length].reshape(-1)[at], got)
        assert inputs.shape == (2, length)
    assert batching.shape_of(flat) == info.shape
    # Packed rows share slots too: the same trained targets, K from the packed rows' mean.
    packed, pinfo = batching.shape_batch(b, _layout(block, pack=True, buckets=(8, 16, 32, block),
                                                    flat_groups=1), pad_id=50256)
    assert pinfo.shape.packed and pinfo.shape.flat
    got = np.sort(packed["targets"][packed["loss_mask"] > 0])
    np.testing.assert_array_equal(got, np.sort(per_row["targets"][per_row["loss_mask"] > 0]))
    need = -(-int(trained.sum()) // pinfo.shape.rows)
    assert pinfo.shape.positions == min(
        x for x in batching.position_buckets(pinfo.shape.length) if x >= need)
    assert batching.BatchShape(4, 64, 16, False, flat=True).covers(
        batching.BatchShape(4, 32, 8, False, flat=True))
    assert not batching.BatchShape(4, 64, 16, False).covers(
        batching.BatchShape(4, 32, 8, False, flat=True))


@pytest.mark.slow
def test_flat_head_on_a_sharded_batch_gives_the_padded_loss(setup):
    block, batches = setup
    shards = 2  # two rows a shard: each shard's slots gather across its rows
    cfg = ModelConfig(block_size=block, vocab_size=50304, n_embd=32, n_head=4, n_layer=2,
                      dropout=0.0)
    mesh = sharding.make_mesh((shards, 1, 1), devices=jax.devices()[:shards])
    _, params = ts.init_model(cfg, mesh, seed=1)
    padded = batching.Layout(block, (block,), batching.ALL_POSITIONS, False)
    assert ts.batch_shards(mesh) == shards
    for loader_batch in batches:
        ref_loss, ref_grads = _loss_and_grads(cfg, params,
                                              batching.shape_batch(loader_batch, padded)[0])
        batch, _ = batching.shape_batch(loader_batch, _layout(block, flat_groups=shards))
        loss, grads = _loss_and_grads(cfg, params, batch, mesh)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6),
                     grads, ref_grads)


def test_flat_head_refuses_microbatches_and_split_shards():
    from configs import base
    from mypt_jax.training.setup import config as cfg_lib

    c = base.get_config()
    c.flat_head, c.grad_accum_steps = True, 2
    with pytest.raises(cfg_lib.ConfigError, match="flat_head: needs grad_accum_steps=1"):
        cfg_lib.resolve(c, num_devices=1, process_count=1, read_files=False)
    c.grad_accum_steps = 1
    assert batching.layout_from_config(c, data_shards=4, process_count=2).flat_groups == 2
    assert batching.layout_from_config(c, data_shards=4).per_row.flat_groups == 0
    with pytest.raises(ValueError, match="whole data shards per process"):
        batching.layout_from_config(c, data_shards=1, process_count=2)

