import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mypt_jax.data import batching
from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts

CFG = ModelConfig(block_size=16, vocab_size=96, n_embd=32, n_head=4, n_layer=2, dropout=0.0)


def _mesh():
    return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _batch(rows=8, seed=0, sparse=False):
    rng = np.random.default_rng(seed)
    mask = (rng.random((rows, 16)) < 0.3).astype(np.float32)
    mask[0] = 0.0  # a row without targets
    mask[1] = 1.0  # and one with many: per-microbatch normalisation would be wrong
    if sparse:  # at most 4 trained tokens per row (for loss_positions)
        mask[:, 4:] = 0.0
    return {"inputs": rng.integers(0, 96, (rows, 16)).astype(np.int32),
            "targets": rng.integers(0, 96, (rows, 16)).astype(np.int32),
            "loss_mask": mask}


@functools.cache
def _run(cfg=CFG, steps=2, seed=0, sparse=False, **kw):
    mesh = _mesh()
    tx, sched = optim.make_optimizer(learning_rate=1e-2, max_iters=10, warmup_iters=0,
                                     weight_decay=0.1, grad_clip=kw.pop("grad_clip", 1.0))
    mdef, params = ts.init_model(cfg, mesh, seed=0)
    state = ts.init_state(params, tx, cfg, mesh)
    k = kw.pop("loss_positions", 0)
    step = ts.make_train_step(mdef, tx, sched, mesh, seed=seed, **kw)
    out = []
    for i in range(steps):
        batch = _batch(seed=i, sparse=sparse)
        state, m = step(state, batching.gather_trained(batch, k) if k else batch)
        out.append(jax.device_get(m))
    return state, out


@pytest.mark.slow
def test_grad_accumulation_equals_one_big_batch():
    s1, m1 = _run(grad_accum_steps=1)
    s4, m4 = _run(grad_accum_steps=4)
    for a, b in zip(m1, m4, strict=True):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    # Adam divides by sqrt(v): float summation-order noise in tiny gradients shows up at 1e-6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
                 s1.params, s4.params)


def test_loss_matches_a_direct_computation():
    mesh = _mesh()
    mdef, params = ts.init_model(CFG, mesh, seed=0)
    b = _batch()
    logits = np.asarray(mdef.merge(params)(b["inputs"]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
    expected = (ce * b["loss_mask"]).sum() / b["loss_mask"].sum()
    _, metrics = _run()
    np.testing.assert_allclose(metrics[0]["train_loss"], expected, rtol=1e-5)


@pytest.mark.slow
def test_chunked_loss_equals_full():
    s1, m1 = _run(loss_chunk_size=0)
    s2, m2 = _run(loss_chunk_size=4)
    np.testing.assert_allclose(m1[-1]["train_loss"], m2[-1]["train_loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
                 s1.params, s2.params)


@pytest.mark.slow
def test_loss_positions_equal_all_positions_when_rows_fit():
    s1, m1 = _run(sparse=True)
    s2, m2 = _run(sparse=True, loss_positions=4)
    s3, m3 = _run(sparse=True, loss_positions=4, loss_chunk_size=2)
    for m in (m2, m3):
        np.testing.assert_allclose(m1[-1]["train_loss"], m[-1]["train_loss"], rtol=1e-5)
    for s in (s2, s3):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
                     s1.params, s.params)


@pytest.mark.slow
def test_dropout_changes_with_the_seed():
    cfg = CFG.replace(dropout=0.2)
    a, ma = _run(cfg, seed=1)
    _, mc = _run(cfg, seed=2)
    _, m0 = _run()
    assert ma[0]["train_loss"] != mc[0]["train_loss"] != m0[0]["train_loss"]
    assert int(a.step) == 2


@pytest.mark.slow
def test_bf16_pure_keeps_bf16_weights_and_moments():
    cfg = CFG.replace(param_dtype="bfloat16", dtype="bfloat16")
    state, metrics = _run(cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.params))
    adam = state.opt_state[1][0]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam.mu))
    assert np.isfinite(metrics[-1]["train_loss"])


def test_lr_and_grad_norm_reported():
    _, m = _run(grad_clip=1e-3)
    assert m[0]["lr"] == pytest.approx(1e-2) and m[0]["grad_norm"] > 1e-3  # pre-clip norm
    assert m[0]["loss_tokens"] == _batch(seed=0)["loss_mask"].sum()
    assert 0 < m[0]["update_norm"] < np.inf  # the finite check's input (observe/step_log.py)


def test_eval_step_sums():
    mesh = _mesh()
    mdef, params = ts.init_model(CFG, mesh, seed=0)
    s, c = ts.make_eval_step(mdef, mesh)(params, _batch())
    assert float(c) == _batch()["loss_mask"].sum() and float(s) > 0
