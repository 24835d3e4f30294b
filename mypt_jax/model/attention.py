"""Causal self-attention over full sequences (training, scoring) and against a KV cache (decoding).

The model config's `attention` picks the full-sequence kernel:
- "xla": the einsum form, the reference: a float32 (T, T) probability tensor per head and
  row, with upstream's dropout on the probabilities.
- "splash": the Pallas splash-attention kernel (TPU), causal mask and segment ids, under
  `jax.shard_map` over the mesh (batch over data x fsdp, heads over tensor). Off TPU it runs
  in Pallas interpret mode: correct, slow, for tests.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPUs, bf16/fp16
  compute). Packed rows reach it as a boolean segment mask, which it turns into a (B, 1, T, T)
  additive bias: its public API has no segment ids.
- "auto": splash on TPU, cudnn on GPU, xla elsewhere; xla (with a one-line note) where the
  fused kernel cannot compute what the config asks for.

The fused kernels have no attention-probability dropout. `attention_prob_dropout=False`
(any kernel) drops that site and keeps the two residual ones; an explicit fused kernel with
dropout > 0 and that site kept is a config error (`ModelConfig` checks it).

Decoding keeps the einsum form against its cache (`attend_cached`) whatever `attention` says.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mypt_jax.parallel import sharding

if TYPE_CHECKING:
    from mypt_jax.model.config import ModelConfig

_AUTO = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}  # Device.platform -> fused kernel
_MASK_VALUE = -1e30  # finite: a fully masked row gives a uniform softmax instead of NaNs
# Splash tiles: kv blocks are multiples of the TPU lane width (128); blocks up to 512 (MaxText's
# default) cover our sequence buckets 128..512 in one tile per row. Shorter or ragged
# sequences are padded up to a multiple of 128 (see `_splash`).
_SPLASH_LANES = 128
_SPLASH_BLOCKS = (512, 256, 128)

Attend = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def platform_of(mesh: Mesh | None) -> str:
    """The platform the attention is compiled for: the mesh's devices, else the default backend."""
    if mesh is not None:
        return mesh.devices.flat[0].platform
    return jax.default_backend()


def resolve(cfg: ModelConfig, platform: str, *, prob_dropout: bool) -> tuple[str, str | None]:
    """(kernel, note): the concrete kernel for `platform`; a note when auto falls back to xla.

    `prob_dropout`: this call drops attention probabilities (training, dropout > 0, the site kept).
    """
    if cfg.attention != "auto":
        return cfg.attention, None
    fused = _AUTO.get(platform)
    if fused is None:
        return "xla", None
    if prob_dropout:
        return "xla", (
            f"attention=auto: xla on {platform}, because {fused} has no attention-probability "
            "dropout; set attention_prob_dropout=false to use it")
    if fused == "cudnn" and cfg.dtype == "float32":
        return "xla", "attention=auto: xla on gpu, because cudnn needs a bf16/fp16 compute dtype"
    return fused, None


def full_sequence(
    cfg: ModelConfig,
    segment_ids_BxT: jax.Array | None,
    shape_BxT: tuple[int, int],
    *,
    mesh: Mesh | None = None,
    training: bool = False,
) -> Attend:
    """`attend(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, key) -> (B, T, H, D)`, causal, within segments.

    Built once per forward, outside the layer scan: the mask (or the kernel's setup) is shared
    by every layer. `key` is the layer's attention-probability dropout key (None: no dropout).
    """
    platform = platform_of(mesh)
    prob_dropout = training and cfg.dropout > 0 and cfg.attention_prob_dropout
    kernel, note = resolve(cfg, platform, prob_dropout=prob_dropout)
    if note:
        warnings.warn(note, stacklevel=3)
    dtype = jnp.dtype(cfg.dtype)
    if kernel == "splash":
        if mesh is None and platform == "tpu" and jax.device_count() > 1:
            # XLA cannot partition a Pallas (Mosaic) call; only shard_map can place it.
            raise ValueError(
                "model config attention='splash' on several TPU devices needs the mesh: "
                "call GPT.hidden / GPT.__call__ with mesh=")
        return lambda q, k, v, key: _splash(
            q, k, v, segment_ids_BxT, mesh, dtype=dtype, interpret=platform != "tpu")
    if kernel == "cudnn":
        if platform not in ("gpu", "cuda"):
            raise ValueError(
                f"model config attention='cudnn' needs an NVIDIA GPU; this model runs on "
                f"{platform} (use attention='auto' or 'xla')")
        return lambda q, k, v, key: _cudnn(
            q.astype(dtype), k.astype(dtype), v.astype(dtype), segment_ids_BxT)
    B, T = shape_BxT
    mask_BxTxT = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
    if segment_ids_BxT is not None:
        mask_BxTxT = mask_BxTxT & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])
    keep = cfg.attention_prob_dropout
    return lambda q, k, v, key: _einsum(q, k, v, mask_BxTxT, cfg, key if keep else None)


# ----------------------------------------------------------------------------------------
# xla: the einsum reference
# ----------------------------------------------------------------------------------------

def _einsum(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask_BxTxS, cfg: ModelConfig, key) -> jax.Array:
    dtype = jnp.dtype(cfg.dtype)
    scores_BxHxTxS = jnp.einsum(
        "bthd,bshd->bhts", q_BxTxHxD.astype(dtype), k_BxSxHxD.astype(dtype),
        preferred_element_type=jnp.float32,
    ) * jnp.float32(1.0 / math.sqrt(cfg.head_dim))
    scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS, _MASK_VALUE)
    probs_BxHxTxS = dropout(jax.nn.softmax(scores_BxHxTxS, axis=-1), cfg.dropout, key)
    return jnp.einsum("bhts,bshd->bthd", probs_BxHxTxS.astype(dtype), v_BxSxHxD.astype(dtype))


def attend_cached(q_BxTxHxD, k_BxHxSxD, v_BxHxSxD, mask_BxTxS, cfg: ModelConfig) -> jax.Array:
    """The einsum form against a (B, H, S, D) cache, no dropout; returns (B, T, H, D)."""
    dtype = jnp.dtype(cfg.dtype)
    scores_BxHxTxS = jnp.einsum(
        "bthd,bhsd->bhts", q_BxTxHxD.astype(dtype), k_BxHxSxD.astype(dtype),
        preferred_element_type=jnp.float32,
    ) * jnp.float32(1.0 / math.sqrt(cfg.head_dim))
    scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS, _MASK_VALUE)
    probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1)
    return jnp.einsum("bhts,bhsd->bthd", probs_BxHxTxS.astype(dtype), v_BxHxSxD.astype(dtype))


# ----------------------------------------------------------------------------------------
# splash (TPU)
# ----------------------------------------------------------------------------------------

def splash_tiling(T: int) -> tuple[int, int]:
    """(padded length, block): T padded up to a multiple of 128 and the largest block dividing it."""
    T_pad = -(-T // _SPLASH_LANES) * _SPLASH_LANES
    return T_pad, next(b for b in _SPLASH_BLOCKS if T_pad % b == 0)


def _mesh_ways(mesh: Mesh, entry) -> int:
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    return math.prod(mesh.shape[n] for n in names)


def _splash(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, segment_ids_BxT, mesh: Mesh | None, *,
            dtype, interpret: bool) -> jax.Array:
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )

    B, T, H, D = q_BxTxHxD.shape
    T_pad, block = splash_tiling(T)
    # The kernel does not scale q; scaling in float32 before the cast keeps q.k as close to
    # the reference's f32-scaled scores as the compute dtype allows.
    q_BxTxHxD = q_BxTxHxD.astype(jnp.float32) * jnp.float32(1.0 / math.sqrt(D))
    # Padding sits after every real position: the causal mask hides it from real queries,
    # and the padded queries' outputs are cut off below.
    pad = ((0, 0), (0, T_pad - T), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x.astype(dtype), pad) for x in (q_BxTxHxD, k_BxTxHxD, v_BxTxHxD))
    seg_BxT = None if segment_ids_BxT is None else jnp.pad(
        segment_ids_BxT.astype(jnp.int32), ((0, 0), (0, T_pad - T)))
    blocks = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )

    def local(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, seg_BxT):
        h = q_BxTxHxD.shape[2]  # heads on this shard
        kernel = splash.make_splash_mha(
            splash_mask.MultiHeadMask([splash_mask.CausalMask((T_pad, T_pad))] * h),
            block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret,
        )
        q_BxHxTxD, k_BxHxTxD, v_BxHxTxD = (x.swapaxes(1, 2) for x in (q_BxTxHxD, k_BxTxHxD, v_BxTxHxD))
        if seg_BxT is None:
            out_BxHxTxD = jax.vmap(kernel)(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD)
        else:
            out_BxHxTxD = jax.vmap(
                lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(s, s))
            )(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, seg_BxT)
        return out_BxHxTxD.swapaxes(1, 2)

    if mesh is None:
        out = local(q, k, v, seg_BxT)
    else:
        qkv_spec = sharding.logical_to_spec(("batch", None, "heads", None))
        batch_ways, head_ways = _mesh_ways(mesh, qkv_spec[0]), _mesh_ways(mesh, qkv_spec[2])
        if B % batch_ways:
            raise ValueError(
                f"attention='splash': a batch of {B} rows does not split over mesh_data * "
                f"mesh_fsdp = {batch_ways} (pad the row count to a multiple)")
        if H % head_ways:
            raise ValueError(
                f"attention='splash': n_head={H} does not split over mesh_tensor={head_ways}")
        seg_spec = sharding.logical_to_spec(("batch", None))
        out = jax.shard_map(
            local, mesh=mesh, check_vma=False,  # the kernel's outputs carry no vma annotation
            in_specs=(qkv_spec, qkv_spec, qkv_spec, None if seg_BxT is None else seg_spec),
            out_specs=qkv_spec,
        )(q, k, v, seg_BxT)
    return out[:, :T]


# ----------------------------------------------------------------------------------------
# cudnn (NVIDIA GPU)
# ----------------------------------------------------------------------------------------

def _cudnn(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, segment_ids_BxT, implementation: str = "cudnn"):
    """`implementation` is "cudnn"; tests pass "xla" to check these arguments on CPU."""
    mask_Bx1xTxT = None
    if segment_ids_BxT is not None:
        mask_Bx1xTxT = (segment_ids_BxT[:, None, :, None] == segment_ids_BxT[:, None, None, :])
    return jax.nn.dot_product_attention(
        q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, mask=mask_Bx1xTxT, is_causal=True,
        implementation=implementation,
    )
