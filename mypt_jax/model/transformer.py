"""The MyPT decoder-only transformer in Flax NNX, numerically matching both upstream generations.

One module builds both upstream architectures from config fields (UPSTREAM_MODEL.md §1, §5):
the seed era (learned positions, LayerNorm with bias, exact-erf GELU MLP with biases) and the
newer LLaMA-style options (RoPE with position interpolation, SwiGLU, RMSNorm), in any mix.

Layout decisions (the converter in interop/upstream.py maps PyTorch keys onto these):
- Layers are stacked: every per-layer parameter has a leading layer axis and the forward runs
  one `jax.lax.scan` over them, so compile time does not grow with depth. Decoding has two
  forms, picked by the cache (`init_cache(stacked=...)`): unrolled, a Python loop over
  per-layer slices (`layer_params`) and a per-layer KV cache, separate buffers updated in
  place (the faster form on XLA:CPU); and scanned, one `jax.lax.scan` over the stacked
  weights carrying a stacked cache, a program that does not grow with depth (decode.py picks
  the form per backend and gives the numbers).
- Kernels are stored (in, out) so `x @ kernel`; the fused qkv kernel's output columns are
  [q | k | v], each head-major (head h owns columns h*D..(h+1)*D-1), as upstream.
- Parameter names, shapes, logical axes and inits live in one table (param_table.py); the
  config is config.py. Activations are pinned to the training mesh with logical axes of their
  own (`sharding.constrain`) at the block boundaries when `hidden` is given a mesh: batch split
  over data and fsdp, width never split over fsdp, so the weights' `embed -> fsdp` split does
  not leak into the residual stream (XLA then kept the stream replicated over fsdp).
- Precision: parameters are stored in `param_dtype`; matmul inputs are cast to `dtype`
  (compute). Like upstream under autocast, the residual stream, the norms, the attention
  softmax and RoPE run in float32; logits come back in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from mypt_jax.model import attention as attention_lib
from mypt_jax.model.attention import dropout as _dropout
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import init_param, param_shapes, param_specs
from mypt_jax.parallel import sharding

# Logical axes of the residual stream (B, T, C), pinned at every block boundary.
RESIDUAL_AXES = ("act_batch", "act_seq", "act_embed")

# ----------------------------------------------------------------------------------------
# Pure building blocks
# ----------------------------------------------------------------------------------------

def _norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None, cfg: ModelConfig) -> jax.Array:
    x = x.astype(jnp.float32)
    if cfg.norm_type == "layernorm":
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
    else:
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + cfg.norm_eps)
    y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y


def rope_tables(positions_BxT: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """cos/sin of shape (B, T, D/2) in float32, upstream's formula with position interpolation."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
    t_BxT = positions_BxT.astype(jnp.float32) / jnp.float32(cfg.rope_scale)
    angles = t_BxT[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x_BxTxHxD: jax.Array, cos_BxTxK: jax.Array, sin_BxTxK: jax.Array) -> jax.Array:
    # Split-half (rotate-half) convention, not interleaved pairs.
    x = x_BxTxHxD.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos_BxTxK[:, :, None, :], sin_BxTxK[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    # A 2-D dot over the flattened leading dims, not an einsum over (B, T): XLA:CPU then lays
    # out the weight gradient's operands without transposed copies of the activations'
    # gradients (copies 93 -> 33 ms of a 1.3 s small-shape step, benchmarks/README.md).
    x_NxI = x.astype(dtype).reshape(-1, x.shape[-1])
    y = jnp.dot(x_NxI, kernel.astype(dtype)).reshape(*x.shape[:-1], kernel.shape[-1])
    return y if bias is None else y + bias.astype(dtype)


def _mlp(x_BxTxC: jax.Array, p: Mapping[str, jax.Array], cfg: ModelConfig) -> jax.Array:
    dtype = jnp.dtype(cfg.dtype)
    if cfg.mlp_type == "gelu":
        h = _linear(x_BxTxC, p["fc_kernel"], p["fc_bias"], dtype)
        h = jax.nn.gelu(h.astype(jnp.float32), approximate=False).astype(dtype)  # exact erf form
        return _linear(h, p["out_kernel"], p["out_bias"], dtype)
    gate = _linear(x_BxTxC, p["gate_kernel"], None, dtype)
    up = _linear(x_BxTxC, p["up_kernel"], None, dtype)
    h = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(dtype)
    return _linear(h, p["down_kernel"], None, dtype)


def _qkv(x_BxTxC, p, cfg: ModelConfig, rope) -> tuple[jax.Array, jax.Array, jax.Array]:
    B, T, C = x_BxTxC.shape
    H, D = cfg.n_head, cfg.head_dim
    h = _norm(x_BxTxC, p["ln1_scale"], p.get("ln1_bias"), cfg)
    qkv_BxTx3C = _linear(h, p["qkv_kernel"], p.get("qkv_bias"), jnp.dtype(cfg.dtype))
    q, k, v = (a.reshape(B, T, H, D) for a in jnp.split(qkv_BxTx3C, 3, axis=-1))
    if rope is not None:
        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
    return q, k, v


def _block_tail(x_BxTxC, attn_BxTxHxD, p, cfg: ModelConfig, keys) -> jax.Array:
    """Attention output projection, both residual adds and the MLP (residual stream in f32)."""
    B, T, C = x_BxTxC.shape
    dtype = jnp.dtype(cfg.dtype)
    y = _linear(attn_BxTxHxD.reshape(B, T, C), p["proj_kernel"], p.get("proj_bias"), dtype)
    x_BxTxC = x_BxTxC + _dropout(y, cfg.dropout, keys[1]).astype(jnp.float32)
    h = _norm(x_BxTxC, p["ln2_scale"], p.get("ln2_bias"), cfg)
    y = _mlp(h, p, cfg)
    return x_BxTxC + _dropout(y, cfg.dropout, keys[2]).astype(jnp.float32)


def _remat(fn, cfg: ModelConfig):
    if cfg.remat == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if cfg.remat == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return fn


# ----------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------

@struct.dataclass
class KVCache:
    """Keys (after RoPE, if any) and values of every layer; slot s = absolute cache slot.

    Heads before slots, so the attention dots read a layer as a (B, H)-batched matmul without
    a transpose. Two forms (`GPT.decode` runs the matching loop):
    - per layer (unrolled decoding): a tuple of n_layer (B, H, S, D) arrays; inside the
      generation loop each layer's buffer is updated in place. A stacked (L, B, S, H, D)
      cache threaded through a layer scan made XLA:CPU copy and transpose it on every step.
    - stacked (scanned decoding): one (L, B, H, S, D) array each, carried through the layer
      scan; a step writes only its new slots (in place) and reads one layer at a time.
    """

    k_layers: tuple[jax.Array, ...] | jax.Array
    v_layers: tuple[jax.Array, ...] | jax.Array

    @property
    def stacked(self) -> bool:
        return not isinstance(self.k_layers, tuple)

    @property
    def max_len(self) -> int:
        return self.k_layers.shape[3] if self.stacked else self.k_layers[0].shape[2]


def _store(cache, new_BxTxHxD: jax.Array, cache_index: jax.Array, layer) -> jax.Array:
    """The chunk's keys or values written to slots [cache_index, +T) of a per-layer cache
    (B, H, S, D) (`layer` None) or of layer `layer` of a stacked cache (L, B, H, S, D)."""
    new_BxHxTxD = new_BxTxHxD.swapaxes(1, 2).astype(cache.dtype)
    zero = jnp.int32(0)
    start = (zero, zero, cache_index, zero)
    if layer is None:
        return jax.lax.dynamic_update_slice(cache, new_BxHxTxD, start)
    return jax.lax.dynamic_update_slice(cache, new_BxHxTxD[None], (layer, *start))


def _decode_block(x_BxTxC, p, k_cache, v_cache, layer, cache_index, mask_BxTxS, rope,
                  cfg: ModelConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One block of incremental decoding against its cache (per-layer, or layer `layer` of
    a stacked one, as `_store`): (x, k_cache, v_cache) after it."""
    q, k, v = _qkv(x_BxTxC, p, cfg, rope)
    k_cache = _store(k_cache, k, cache_index, layer)
    v_cache = _store(v_cache, v, cache_index, layer)
    k_BxHxSxD, v_BxHxSxD = (k_cache, v_cache) if layer is None else (k_cache[layer], v_cache[layer])
    attn = attention_lib.attend_cached(q, k_BxHxSxD, v_BxHxSxD, mask_BxTxS, cfg)
    return _block_tail(x_BxTxC, attn, p, cfg, (None, None, None)), k_cache, v_cache


# ----------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------

class Blocks(nnx.Module):
    """All transformer blocks' parameters, stacked on a leading layer axis."""

    def __init__(self, cfg: ModelConfig, keys: dict[str, jax.Array]):
        for name, (shape, _, init) in param_specs(cfg)["blocks"].items():
            setattr(self, name, nnx.Param(init_param(keys[name], shape, init, cfg)))

    def arrays(self) -> dict[str, jax.Array]:
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


class GPT(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        specs = param_specs(config)
        names = [("", n) for n in specs[""]] + [("blocks", n) for n in specs["blocks"]]
        keys = dict(zip(names, jax.random.split(rngs.params(), len(names)), strict=True))
        for name, (shape, _, init) in specs[""].items():
            setattr(self, name, nnx.Param(init_param(keys["", name], shape, init, config)))
        self.blocks = Blocks(config, {n: keys["blocks", n] for n in specs["blocks"]})
        # Stored dropout stream (like nnx.Dropout); a call may pass its own rngs instead.
        self.dropout_rngs = rngs["dropout"].fork()

    # ----- helpers -----
    def _embed(self, tokens_BxT: jax.Array, positions_BxT: jax.Array) -> jax.Array:
        # Note: a learned-position lookup at position >= block_size clamps under jit
        # (upstream raises); callers keep positions < block_size.
        x = jnp.take(self.wte[...], tokens_BxT, axis=0).astype(jnp.float32)
        if self.config.pos_encoding == "learned":
            x = x + jnp.take(self.wpe[...], positions_BxT, axis=0).astype(jnp.float32)
        return x

    def _rope(self, positions_BxT: jax.Array):
        return rope_tables(positions_BxT, self.config) if self.config.pos_encoding == "rope" else None

    def _final(self, x_BxTxC: jax.Array) -> jax.Array:
        ln_f_bias = self.ln_f_bias[...] if self.config.norm_type == "layernorm" else None
        return _norm(x_BxTxC, self.ln_f_scale[...], ln_f_bias, self.config).astype(self.config.dtype)

    def _dropout_keys(self, deterministic: bool, rngs) -> jax.Array | None:
        if deterministic or self.config.dropout == 0.0:
            return None
        if rngs is None:
            rngs = self.dropout_rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs["dropout"]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        else:
            key = rngs
        # one key per layer and dropout site (attention probs, attn residual, mlp residual)
        return jax.random.split(key, (self.config.n_layer, 3))

    # ----- full-sequence forward (training, scoring) -----
    def hidden(
        self,
        tokens_BxT: jax.Array,
        *,
        positions_BxT: jax.Array | None = None,
        segment_ids_BxT: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> jax.Array:
        """Final-norm hidden states (B, T, C) in the compute dtype.

        Attention is causal; with `segment_ids_BxT` (packed rows) a query also only sees keys
        of its own segment. `mesh`: the training mesh; the residual stream is pinned to its
        batch split at the block boundaries (values are the same with or without it) and the
        splash kernel runs under shard_map over it.
        """
        cfg = self.config
        B, T = tokens_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        x_BxTxC = sharding.constrain(self._embed(tokens_BxT, positions_BxT), RESIDUAL_AXES, mesh)
        rope = self._rope(positions_BxT)
        keys = self._dropout_keys(deterministic, rngs)
        attend = attention_lib.full_sequence(
            cfg, segment_ids_BxT, (B, T), mesh=mesh, training=keys is not None)

        def layer(x, scanned):
            p, layer_keys = scanned
            ks = (None, None, None) if layer_keys is None else tuple(layer_keys)
            x = sharding.constrain(x, RESIDUAL_AXES, mesh)
            q, k, v = _qkv(x, p, cfg, rope)
            attn = attend(q, k, v, ks[0])
            return sharding.constrain(_block_tail(x, attn, p, cfg, ks), RESIDUAL_AXES, mesh), None

        x_BxTxC, _ = jax.lax.scan(_remat(layer, cfg), x_BxTxC, (self.blocks.arrays(), keys),
                                  unroll=not cfg.scan_layers)
        return sharding.constrain(self._final(x_BxTxC), RESIDUAL_AXES, mesh)

    def output_head(self) -> tuple[jax.Array, jax.Array]:
        """(kernel (V, C), bias (V,)) of the vocabulary projection: logits = h @ kernel.T + bias."""
        w_VxC = self.wte[...] if self.config.tie_weights else self.lm_head_kernel[...]
        return w_VxC, self.lm_head_bias[...]

    def logits_from_hidden(self, h_BxTxC: jax.Array) -> jax.Array:
        dtype = jnp.dtype(self.config.dtype)
        w_VxC, b_V = self.output_head()
        logits = jnp.einsum("btc,vc->btv", h_BxTxC.astype(dtype), w_VxC.astype(dtype))
        return logits + b_V.astype(dtype)

    def __call__(
        self,
        tokens_BxT: jax.Array,
        *,
        positions_BxT: jax.Array | None = None,
        segment_ids_BxT: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> jax.Array:
        """Logits (B, T, V) in the compute dtype for every position."""
        h = self.hidden(
            tokens_BxT, positions_BxT=positions_BxT, segment_ids_BxT=segment_ids_BxT,
            deterministic=deterministic, rngs=rngs, mesh=mesh,
        )
        return self.logits_from_hidden(h)

    # ----- incremental decoding -----
    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None, *,
                   stacked: bool = False) -> KVCache:
        """An empty cache; `stacked`: the scanned-decoding form (see KVCache)."""
        cfg = self.config
        shape = (batch_size, cfg.n_head, max_len, cfg.head_dim)
        dtype = jnp.dtype(dtype or cfg.dtype)
        if stacked:
            return KVCache(*(jnp.zeros((cfg.n_layer, *shape), dtype) for _ in range(2)))

        def zeros() -> tuple[jax.Array, ...]:
            return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layer))

        return KVCache(zeros(), zeros())

    def layer_params(self) -> list[dict[str, jax.Array]]:
        """The stacked block parameters cut into one dict of arrays per layer.

        For decoding: computed once before a generation loop, each layer's weights become
        their own buffers. Scanning over the stacked arrays instead makes XLA:CPU copy every
        layer's slice on every step (measured 1.46 vs 0.58 ms/step for 12.6 MB of weights).
        """
        stacked = self.blocks.arrays()
        return [{k: v[i] for k, v in stacked.items()} for i in range(self.config.n_layer)]

    def decode(
        self,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: KVCache,
        cache_index: jax.Array | int,
        key_valid_BxS: jax.Array,
        layers: list[Mapping[str, jax.Array]] | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Runs a chunk of T tokens against the cache; returns logits (B, T, V) and the new cache.

        The chunk's K/V land in slots [cache_index, cache_index + T) of every row (the caller
        keeps cache_index + T <= max_len: dynamic_update_slice would clamp the start). Query t
        sees slots s <= cache_index + t where key_valid_BxS[b, s] is true. `positions_BxT` are
        the absolute positions for the position table / RoPE.

        The cache's form picks the loop (same values either way). Per-layer cache: an
        unrolled Python loop (not a scan), each layer's weights and cache separate buffers,
        updated in place inside a caller's `lax.while_loop`; `layers`: `layer_params()`,
        hoisted out of a generation loop by the caller (cut here if not given). Stacked cache
        (`init_cache(stacked=True)`): one `lax.scan` over the stacked weights carrying the
        cache, so the program holds one copy of the layer whatever the depth; `layers` unused.
        """
        cfg = self.config
        B, T = tokens_BxT.shape
        S = cache.max_len
        cache_index = jnp.asarray(cache_index, jnp.int32)
        x_BxTxC = self._embed(tokens_BxT, positions_BxT)
        rope = self._rope(positions_BxT)
        slot_T = cache_index + jnp.arange(T, dtype=jnp.int32)
        causal_TxS = jnp.arange(S, dtype=jnp.int32)[None, :] <= slot_T[:, None]
        mask_BxTxS = causal_TxS[None] & key_valid_BxS[:, None, :].astype(bool)
        context = (cache_index, mask_BxTxS, rope, cfg)
        if cache.stacked:
            def layer_step(carry, scanned):
                x, k_all, v_all = carry
                p, i = scanned
                return _decode_block(x, p, k_all, v_all, i, *context), None

            (x_BxTxC, k_out, v_out), _ = jax.lax.scan(
                layer_step, (x_BxTxC, cache.k_layers, cache.v_layers),
                (self.blocks.arrays(), jnp.arange(cfg.n_layer, dtype=jnp.int32)))
        else:
            layers = self.layer_params() if layers is None else layers
            k_out, v_out = [], []
            for p, k_cache_BxHxSxD, v_cache_BxHxSxD in zip(
                layers, cache.k_layers, cache.v_layers, strict=True
            ):
                x_BxTxC, k_cache_BxHxSxD, v_cache_BxHxSxD = _decode_block(
                    x_BxTxC, p, k_cache_BxHxSxD, v_cache_BxHxSxD, None, *context)
                k_out.append(k_cache_BxHxSxD)
                v_out.append(v_cache_BxHxSxD)
            k_out, v_out = tuple(k_out), tuple(v_out)
        logits = self.logits_from_hidden(self._final(x_BxTxC))
        return logits, KVCache(k_out, v_out)


def abstract_model(config: ModelConfig) -> GPT:
    """A GPT whose parameters are ShapeDtypeStructs (no memory), for restore targets."""
    return nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))


def from_params(config: ModelConfig, params: Mapping[str, Any], *, seed: int = 0) -> GPT:
    """A GPT holding `params` (pure nested dict, shapes of `param_shapes`), cast to param_dtype.

    Builds the module abstractly first, so no random init is materialised.
    """
    expected = param_shapes(config)
    flat_want = jax.tree_util.tree_flatten_with_path(expected, is_leaf=lambda x: isinstance(x, tuple))[0]
    for path, shape in flat_want:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        node: Any = params
        for k in path:
            node = node.get(getattr(k, "key", k)) if isinstance(node, Mapping) else None
        if node is None:
            raise ValueError(f"params: missing parameter {name!r}")
        if tuple(node.shape) != tuple(shape):
            raise ValueError(f"params: {name!r} has shape {tuple(node.shape)}, expected {shape}")
    model = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(seed)))
    state = nnx.state(model, nnx.Param)
    dtype = jnp.dtype(config.param_dtype)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, dtype), dict(params)))
    nnx.update(model, state)
    model.dropout_rngs = nnx.Rngs(dropout=seed)["dropout"].fork()
    return model
