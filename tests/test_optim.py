import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from mypt_jax.model import ModelConfig, param_shapes
from mypt_jax.training.step import optim


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _params(cfg):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def test_decay_mask_is_exactly_the_block_matrices():
    cfg = ModelConfig(block_size=8, vocab_size=64, n_embd=16, n_head=2, n_layer=2, bias=True)
    mask = _flat(optim.decay_mask(_params(cfg)))
    decayed = sorted(k for k, v in mask.items() if v)
    assert decayed == ["blocks.fc_kernel", "blocks.out_kernel", "blocks.proj_kernel",
                       "blocks.qkv_kernel"]
    assert not mask["wte"] and not mask["wpe"] and not mask["ln_f_scale"]
    assert not mask["blocks.qkv_bias"] and not mask["lm_head_bias"]


def test_decay_mask_untied_head_and_swiglu():
    cfg = ModelConfig(block_size=8, vocab_size=64, n_embd=16, n_head=2, n_layer=1,
                      tie_weights=False, mlp_type="swiglu", norm_type="rmsnorm",
                      pos_encoding="rope")
    decayed = sorted(k for k, v in _flat(optim.decay_mask(_params(cfg))).items() if v)
    # upstream: a 2-D weight without "embedding"/"ln" in its name is decayed, lm_head included
    assert decayed == ["blocks.down_kernel", "blocks.gate_kernel", "blocks.proj_kernel",
                       "blocks.qkv_kernel", "blocks.up_kernel", "lm_head_kernel"]


def test_warmup_then_constant():
    s = optim.lr_schedule(1.0, max_iters=100, warmup_iters=4)
    assert [float(s(i)) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert float(s(99)) == 1.0


def test_warmup_fraction_and_zero():
    s = optim.lr_schedule(2.0, max_iters=200, warmup_iters=0.05)  # 10 steps
    assert np.isclose(float(s(0)), 0.2) and np.isclose(float(s(9)), 2.0)
    assert float(optim.lr_schedule(2.0, 10, 0)(0)) == 2.0


def test_cosine_reaches_the_floor():
    s = optim.lr_schedule(1.0, max_iters=110, warmup_iters=10, kind="cosine", min_lr=0.1)
    assert np.isclose(float(s(10)), 1.0)
    assert np.isclose(float(s(60)), 0.55, atol=1e-6)  # half way: (1 + 0.1) / 2
    assert np.isclose(float(s(110)), 0.1) and np.isclose(float(s(500)), 0.1)


@pytest.mark.parametrize("clip", [1.0, 0.05, 0.0])
def test_adamw_and_clip_match_torch(clip):
    rng = np.random.default_rng(0)
    params = {"blocks": {"qkv_kernel": rng.normal(size=(2, 4, 6)).astype(np.float32),
                         "ln1_scale": rng.normal(size=(2, 4)).astype(np.float32)},
              "wte": rng.normal(size=(5, 4)).astype(np.float32)}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
             for _ in range(3)]
    lr, wd = 1e-2, 0.1
    tx, _ = optim.make_optimizer(learning_rate=lr, max_iters=10, warmup_iters=2,
                                 weight_decay=wd, grad_clip=clip)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)

    # torch: decay group = the block matrix, no-decay group = the rest; warmup (i+1)/W.
    t = {k: torch.tensor(v, requires_grad=True) for k, v in _flat(params).items()}
    opt = torch.optim.AdamW(
        [{"params": [t["blocks.qkv_kernel"]], "weight_decay": wd},
         {"params": [t["blocks.ln1_scale"], t["wte"]], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8)
    for i, g in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = lr * (i + 1) / 2 if i < 2 else lr
        for k, v in _flat(g).items():
            t[k].grad = torch.tensor(v)
        if clip:
            torch.nn.utils.clip_grad_norm_(list(t.values()), clip)
        opt.step()
    for k, v in _flat(jax.tree.map(np.asarray, p)).items():
        np.testing.assert_allclose(v, t[k].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_clip_formula_is_torch_not_optax():
    g = {"w": jnp.array([3.0, 4.0])}  # norm 5
    out, _ = optim.clip_by_global_norm_upstream(1.0).update(g, None)
    np.testing.assert_allclose(np.array(out["w"]), np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-7)


@pytest.mark.parametrize("clip", [1.0, 0.05])
def test_frozen_rows_are_outside_clip_decay_and_adam(clip):
    """Layer 0 of a stacked pair frozen, and the embedding: torch sees the trainable layer as
    its own tensor in the decay group and nothing else of the stack (requires_grad=False)."""
    from mypt_jax.training.step.freeze import Freeze, FrozenTransformation

    rng = np.random.default_rng(1)
    params = {"blocks": {"qkv_kernel": rng.normal(size=(2, 4, 6)).astype(np.float32),
                         "ln1_scale": rng.normal(size=(2, 4)).astype(np.float32)},
              "wte": rng.normal(size=(5, 4)).astype(np.float32),
              "lm_head_bias": rng.normal(size=(5,)).astype(np.float32)}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
             for _ in range(3)]
    lr, wd = 1e-2, 0.1
    freeze = Freeze(layers=1, embeddings=True)
    tx, _ = optim.make_optimizer(learning_rate=lr, max_iters=10, warmup_iters=0,
                                 weight_decay=wd, grad_clip=clip, freeze=freeze)
    assert not isinstance(optim.make_optimizer(learning_rate=lr, max_iters=10, warmup_iters=0,
                                               freeze=Freeze())[0], FrozenTransformation)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.inner.update(freeze.view(jax.tree.map(jnp.asarray, g)), state,
                                         freeze.view(p))
        p = freeze.apply_updates(p, updates)

    qkv1 = torch.tensor(params["blocks"]["qkv_kernel"][1], requires_grad=True)
    ln1 = torch.tensor(params["blocks"]["ln1_scale"][1], requires_grad=True)
    bias = torch.tensor(params["lm_head_bias"], requires_grad=True)
    opt = torch.optim.AdamW([{"params": [qkv1], "weight_decay": wd},
                             {"params": [ln1, bias], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    for g in grads:
        for t, v in ((qkv1, g["blocks"]["qkv_kernel"][1]), (ln1, g["blocks"]["ln1_scale"][1]),
                     (bias, g["lm_head_bias"])):
            t.grad = torch.tensor(v)
        torch.nn.utils.clip_grad_norm_([qkv1, ln1, bias], clip)
        opt.step()
    for got, want in ((p["blocks"]["qkv_kernel"][1], qkv1), (p["blocks"]["ln1_scale"][1], ln1),
                      (p["lm_head_bias"], bias)):
        np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(p["blocks"]["qkv_kernel"][0]),
                                  params["blocks"]["qkv_kernel"][0])
    np.testing.assert_array_equal(np.asarray(p["wte"]), params["wte"])
