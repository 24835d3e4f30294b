"""The attention kernels: splash (Pallas interpret mode on CPU, compile-only on a TPU topology)
and the cudnn call's arguments against the einsum reference; the per-platform choice; the
dropout policy.

Tolerances. float32: splash's online softmax sums in another order than the einsum's, so
outputs and gradients agree to ~1e-6 of their largest magnitude (asserted: 1e-5). bfloat16:
both kernels round q, k, v and the probabilities to bf16 (8 bits of mantissa); splash's error
against the float32 einsum must stay within 2x the bf16 einsum's own error (plus 1e-3 of the
largest magnitude for rounding ties).
"""

from __future__ import annotations

import json
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mypt_jax.model import GPT, ConfigError, ModelConfig, attention
from mypt_jax.model import loss as loss_lib
from mypt_jax.parallel import sharding

# head_dim 64, the 750M model's
CFG = ModelConfig(block_size=256, vocab_size=96, n_embd=128, n_head=2, n_layer=2, dropout=0.0)


def _qkv(B: int, T: int, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(k, (B, T, CFG.n_head, CFG.head_dim), jnp.float32) for k in ks)


def _packed_segments(B: int, T: int) -> jax.Array:
    """Row 0: three episodes and a padded tail (segment 0); row 1: one episode filling the row."""
    a, b = T // 4, T // 2
    row0 = np.r_[np.full(a, 1), np.full(b, 2), np.full(T - a - b - 5, 3), np.zeros(5)]
    rows = [row0, np.ones(T)] * (B // 2)
    return jnp.asarray(np.stack(rows).astype(np.int32))


def _value_and_grads(cfg: ModelConfig, segment_ids, q, k, v, mesh=None):
    B, T = q.shape[:2]
    attend = attention.full_sequence(cfg, segment_ids, (B, T), mesh=mesh)
    w = jax.random.normal(jax.random.key(9), q.shape, jnp.float32)  # a generic cotangent

    def f(q, k, v):
        return jnp.sum(attend(q, k, v, None).astype(jnp.float32) * w)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)


def _max_err(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                               strict=True))


def _scale(a) -> float:
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))


# ----------------------------------------------------------------------------------------
# splash numerics on CPU (Pallas interpret mode)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["causal", "segments"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_splash_matches_einsum_forward_and_gradients(dtype, packed):
    B, T = 2, 128
    q, k, v = _qkv(B, T)
    seg = _packed_segments(B, T) if packed else None
    ref = _value_and_grads(CFG.replace(attention="xla"), seg, q, k, v)
    splash = _value_and_grads(CFG.replace(attention="splash", dtype=dtype), seg, q, k, v)
    if dtype == "float32":
        assert _max_err(splash, ref) <= 1e-5 * _scale(ref)
    else:
        einsum_bf16 = _value_and_grads(CFG.replace(attention="xla", dtype=dtype), seg, q, k, v)
        for got, want, bf16 in zip(jax.tree.leaves(splash), jax.tree.leaves(ref),
                                   jax.tree.leaves(einsum_bf16), strict=True):
            assert _max_err(got, want) <= 2 * _max_err(bf16, want) + 1e-3 * _scale(want)


@pytest.mark.parametrize("T", [64, pytest.param(200, marks=pytest.mark.slow)])
def test_splash_pads_sequences_that_are_not_a_multiple_of_128(T):
    # 64: the shortest sequence bucket, below the kernel's 128-lane minimum; 200: ragged.
    assert attention.splash_tiling(T) == ((128, 128) if T == 64 else (256, 256))
    q, k, v = _qkv(2, T, seed=1)
    seg = _packed_segments(2, T)
    ref = _value_and_grads(CFG.replace(attention="xla"), seg, q, k, v)
    got = _value_and_grads(CFG.replace(attention="splash"), seg, q, k, v)
    assert _max_err(got, ref) <= 1e-5 * _scale(ref)


def test_splash_tiling_of_the_sequence_buckets():
    assert [attention.splash_tiling(t) for t in (64, 128, 256, 512, 1024)] == [
        (128, 128), (128, 128), (256, 256), (512, 512), (1024, 512)]


@pytest.mark.slow
def test_training_dropout_policy_is_the_same_for_every_kernel():
    """attention_prob_dropout=False: the residual sites keep their masks (same keys), so a
    training forward through splash equals the einsum's with the same key."""
    cfg = CFG.replace(dropout=0.2, attention_prob_dropout=False, block_size=128)
    graphdef, state = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 128)), jnp.int32)

    def logits(key, **config):
        def forward(state, key):
            model = nnx.merge(graphdef, state)
            model.config = cfg.replace(**config)
            return model(tokens, deterministic=key is None, rngs=key)

        return jax.jit(forward)(state, key)

    key = jax.random.key(5)
    xla = logits(key, attention="xla")
    splash = logits(key, attention="splash")
    np.testing.assert_allclose(splash, xla, atol=2e-5 * float(jnp.max(jnp.abs(xla))))
    # the residual dropout is still there
    assert float(jnp.max(jnp.abs(xla - logits(None, attention="xla")))) > 0.1
    # and with the site kept, the einsum drops probabilities too (today's behaviour)
    kept = logits(key, attention="xla", attention_prob_dropout=True)
    assert float(jnp.max(jnp.abs(xla - kept))) > 1e-3


# ----------------------------------------------------------------------------------------
# Packed rows through splash under shard_map == unpacked rows through the einsum
# ----------------------------------------------------------------------------------------

EPISODES = (30, 50, 20, 60, 45, 64, 10, 100)  # lengths; packed two per 128-token row


def packed_vs_unpacked(mesh) -> dict[str, float]:
    """(loss, grad norm) of the episodes packed with segment ids through splash on `mesh`, and
    of the same episodes one per row through the einsum, float32."""
    cfg = CFG.replace(block_size=128, pos_encoding="rope")
    model = GPT(cfg.replace(attention="xla"), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    eps = [(rng.integers(0, 96, n), rng.integers(0, 96, n), (rng.random(n) < 0.5)) for n in EPISODES]

    def rows(per_row: int, T: int):
        out = {k: np.zeros((len(eps) // per_row, T), np.int32) for k in ("tok", "tgt", "seg", "pos")}
        out["mask"] = np.zeros((len(eps) // per_row, T), np.float32)
        for i, (tok, tgt, m) in enumerate(eps):
            r, start = i // per_row, 0 if i % per_row == 0 else len(eps[i - 1][0])
            span = slice(start, start + len(tok))
            out["tok"][r, span], out["tgt"][r, span], out["mask"][r, span] = tok, tgt, m
            out["seg"][r, span], out["pos"][r, span] = i % per_row + 1, np.arange(len(tok))
        return out

    def loss(params, b, attention_kind, mesh, packed):
        m = nnx.merge(graphdef, params, rest)
        m.config = cfg.replace(attention=attention_kind)
        h = m.hidden(jnp.asarray(b["tok"]), positions_BxT=jnp.asarray(b["pos"]),
                     segment_ids_BxT=jnp.asarray(b["seg"]) if packed else None, mesh=mesh)
        s, c = loss_lib.head_ce_sums(h, *m.output_head(), jnp.asarray(b["tgt"]), jnp.asarray(b["mask"]))
        return s / c

    out = {}
    for name, b, kind, m, packed in (("packed_splash", rows(2, 128), "splash", mesh, True),
                                     ("unpacked_einsum", rows(1, 128), "xla", None, False)):
        value, grads = jax.jit(jax.value_and_grad(
            lambda p, b=b, kind=kind, m=m, packed=packed: loss(p, b, kind, m, packed)))(params)
        out[name] = [float(value), float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))]
    return out


@pytest.mark.slow
def test_packed_rows_through_sharded_splash_equal_unpacked_einsum_loss():
    """4 CPU devices, mesh data 2 x tensor 2: batch and heads split under shard_map."""
    import train_helpers

    out = train_helpers.run_module([__file__], devices=4)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(res["packed_splash"], res["unpacked_einsum"], rtol=2e-5)


# ----------------------------------------------------------------------------------------
# Compile-only TPU topology: the real (Mosaic) kernel under shard_map, forward and backward
# ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_auto_compiles_the_splash_kernel_for_a_tpu_topology(monkeypatch):
    from jax.experimental import topologies

    from mypt_jax.training.step import optim
    from mypt_jax.training.step import train_step as ts

    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server here
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another process may hold libtpu
    topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    mesh = sharding.make_mesh((2, 1, 2), devices=topo.devices)
    assert attention.platform_of(mesh) == "tpu"
    cfg = CFG.replace(block_size=128, dropout=0.1, attention_prob_dropout=False, dtype="bfloat16")
    tx, schedule = optim.make_optimizer(learning_rate=1e-3, max_iters=10, warmup_iters=0,
                                        weight_decay=0.1, grad_clip=1.0)
    step = ts.make_train_step(ts.model_def(cfg), tx, schedule, mesh, seed=0)
    bsh = ts.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((4, 128), dt, sharding=bsh) for k, dt in
             (("inputs", jnp.int32), ("targets", jnp.int32), ("loss_mask", jnp.float32))}
    lowered = step.lower(ts.abstract_state(tx, cfg, mesh), batch)
    hlo = lowered.as_text()
    # the forward and both backward kernels (dq, dkv), under a manual (shard_map) region
    for name in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):
        assert name in hlo, name
    assert "sdy.manual_computation" in hlo
    assert lowered.compile() is not None


# ----------------------------------------------------------------------------------------
# cudnn: the arguments, checked through jax's own xla implementation on CPU
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["causal", "segments"])
def test_cudnn_call_matches_einsum_through_the_xla_implementation(packed, monkeypatch):
    B, T = 2, 64
    q, k, v = _qkv(B, T)
    seg = _packed_segments(B, T) if packed else None
    ref = attention.full_sequence(CFG.replace(attention="xla"), seg, (B, T))(q, k, v, None)
    got = attention._cudnn(q, k, v, seg, implementation="xla")
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # full_sequence hands cudnn the compute dtype (it takes bf16/fp16 only)
    seen = {}
    monkeypatch.setattr(attention, "_cudnn", lambda *a: seen.setdefault("dtypes", {x.dtype for x in a[:3]}))
    cfg = CFG.replace(attention="cudnn", dtype="bfloat16")
    attention.full_sequence(cfg, seg, (B, T), mesh=_fake_mesh("gpu"))(q, k, v, None)
    assert seen["dtypes"] == {jnp.dtype("bfloat16")}


def test_cudnn_off_gpu_is_a_clear_error():
    cfg = CFG.replace(attention="cudnn", dtype="bfloat16")
    with pytest.raises(ValueError, match="attention='cudnn' needs an NVIDIA GPU; this model runs on cpu"):
        attention.full_sequence(cfg, None, (2, 64), mesh=_fake_mesh("cpu"))


# ----------------------------------------------------------------------------------------
# Choice per platform, and the dropout policy
# ----------------------------------------------------------------------------------------

def _fake_mesh(platform: str):
    return types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)]))


def test_platform_comes_from_the_mesh_else_the_default_backend(monkeypatch):
    assert attention.platform_of(_fake_mesh("tpu")) == "tpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention.platform_of(None) == "gpu"
    # several TPU devices and no mesh: the kernel could not be placed
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    with pytest.raises(ValueError, match="attention='splash' on several TPU devices needs the mesh"):
        attention.full_sequence(CFG.replace(attention="splash"), None, (2, 64))


@pytest.mark.parametrize("platform, kernel", [("cpu", "xla"), ("tpu", "splash"), ("gpu", "cudnn"),
                                              ("cuda", "cudnn"), ("rocm", "xla")])
def test_auto_per_platform(platform, kernel):
    cfg = CFG.replace(dtype="bfloat16")
    assert attention.resolve(cfg, platform, prob_dropout=False) == (kernel, None)
    for explicit in ("xla", "splash", "cudnn"):
        assert attention.resolve(cfg.replace(attention=explicit), platform, prob_dropout=False) == (
            explicit, None)


def test_auto_falls_back_to_xla_with_a_note(monkeypatch):
    cfg = CFG.replace(dropout=0.05, dtype="bfloat16")  # the phase configs' dropout, site kept
    for platform, fused in (("tpu", "splash"), ("gpu", "cudnn")):
        kernel, note = attention.resolve(cfg, platform, prob_dropout=True)
        assert kernel == "xla" and f"because {fused} has no attention-probability dropout" in note
        assert "attention_prob_dropout=false" in note
    kernel, note = attention.resolve(CFG.replace(dtype="float32"), "gpu", prob_dropout=False)
    assert kernel == "xla" and "cudnn needs a bf16/fp16 compute dtype" in note
    # the note is one warning, raised where the forward is built; eval (no dropout) stays fused
    calls = []
    monkeypatch.setattr(attention, "_splash", lambda *a, **kw: calls.append(kw) or a[0])
    q, k, v = _qkv(2, 64)
    with pytest.warns(UserWarning, match="attention=auto: xla on tpu"):
        attention.full_sequence(cfg, None, (2, 64), mesh=_fake_mesh("tpu"), training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention.full_sequence(cfg, None, (2, 64), mesh=_fake_mesh("tpu"))(q, k, v, None)
    assert calls == [{"dtype": jnp.dtype("bfloat16"), "interpret": False}]


def test_fused_kernel_with_probability_dropout_is_a_config_error():
    for kind in ("splash", "cudnn"):
        with pytest.raises(ConfigError, match=f"attention='{kind}' has no attention-probability "
                                              "dropout, but dropout=0.05 and attention_prob_dropout"):
            ModelConfig(attention=kind, dropout=0.05, dtype="bfloat16")
        ModelConfig(attention=kind, dropout=0.05, dtype="bfloat16", attention_prob_dropout=False)
        ModelConfig(attention=kind, dropout=0.0, dtype="bfloat16")
    with pytest.raises(ConfigError, match="attention='cudnn' needs a bfloat16 or float16"):
        ModelConfig(attention="cudnn", dropout=0.0, dtype="float32")
    with pytest.raises(ConfigError, match=r"attention='flash': expected one of \('auto'"):
        ModelConfig(attention="flash")
    with pytest.raises(ConfigError, match="attention_prob_dropout=0: expected true or false"):
        ModelConfig(attention_prob_dropout=0)


def test_configs_written_before_the_attention_fields_still_load():
    old = ModelConfig().to_dict()
    del old["attention"], old["attention_prob_dropout"]
    cfg = ModelConfig.from_dict(old)
    assert (cfg.attention, cfg.attention_prob_dropout) == ("auto", True)


def test_training_config_fields_reach_the_model_config():
    from configs import base
    from mypt_jax.training.setup import config as cfg_lib

    c = base.get_config()
    assert (c.attention, c.attention_prob_dropout) == ("auto", True)
    c.attention, c.attention_prob_dropout = "splash", False
    assert cfg_lib.model_config(c).attention == "splash"
    c.attention_prob_dropout = True  # base dropout is 0.05
    with pytest.raises(cfg_lib.ConfigError, match="^attention='splash' has no attention-probability"):
        cfg_lib.model_config(c)


if __name__ == "__main__":  # the sharded half of the packed-rows test, in a 4-device process
    print(json.dumps(packed_vs_unpacked(sharding.make_mesh((2, 1, 2)))))
