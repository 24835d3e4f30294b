"""Train state and the sharded, jitted train and eval steps (pure functions over explicit state).

The model is split once into its graph definition and a pure-dict parameter tree; the step
merges them inside `jax.jit` (`jax.value_and_grad` over the pure tree, no nnx transforms).
Shardings come from the model's logical axes and `sharding.LOGICAL_AXIS_RULES` on an Auto
(GSPMD) mesh; the state is donated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mypt_jax.model import loss as loss_lib
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import param_shardings
from mypt_jax.model.transformer import GPT
from mypt_jax.parallel import sharding
from mypt_jax.training.step import freeze as freeze_lib
from mypt_jax.training.step import optim

Params = dict[str, Any]
Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Params  # pure dict, shaped like nnx.to_pure_dict(nnx.state(model, nnx.Param))
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """Everything but the parameters: rebuilds a GPT around any parameter tree."""

    config: ModelConfig
    graphdef: Any
    param_template: Any  # nnx.State of abstract params (structure only)
    rest: Any  # the model's non-parameter state (its stored dropout stream, unused here)

    def merge(self, params: Params) -> GPT:
        state = jax.tree.map(lambda x: x, self.param_template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self.rest)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return sharding.named_sharding(mesh, ("batch", "seq"))


def batch_shards(mesh: Mesh | None) -> int:
    """How many blocks of rows the batch is split into over the mesh (its data x fsdp axes)."""
    if mesh is None:
        return 1
    axes = batch_sharding(mesh).spec[0] or ()
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def init_model(config: ModelConfig, mesh: Mesh, seed: int) -> tuple[ModelDef, Params]:
    """A fresh model, each parameter created directly in its sharded layout."""
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    graphdef, template, _ = nnx.split(abstract, nnx.Param, ...)
    p_sh = param_shardings(config, mesh)

    def make():
        model = GPT(config, rngs=nnx.Rngs(params=seed, dropout=seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return nnx.to_pure_dict(params), rest

    params, rest = jax.jit(make, out_shardings=(p_sh, replicated(mesh)))()
    return ModelDef(config, graphdef, template, rest), params


def model_def(config: ModelConfig) -> ModelDef:
    """The ModelDef alone, for parameters that come from a checkpoint (no weights built)."""
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    graphdef, template, rest = nnx.split(abstract, nnx.Param, ...)
    # The stored dropout stream is never used (steps pass their own key); any value will do.
    rest = jax.tree.map(
        lambda x: jax.random.key(0) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        else jnp.zeros(x.shape, x.dtype),
        rest,
    )
    return ModelDef(config, graphdef, template, rest)


def abstract_params(config: ModelConfig, mesh: Mesh) -> Params:
    """ShapeDtypeStructs of the params carrying this mesh's shardings (restore targets)."""
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes, param_shardings(config, mesh),
    )


def state_shardings(tx: optax.GradientTransformation, config: ModelConfig, mesh: Mesh) -> TrainState:
    p_sh = param_shardings(config, mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params(config, mesh))
    # A parameter frozen whole has no moments (an optax.MaskedNode); the cut block stacks
    # keep their parameter's sharding ("layers" is never split).
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda x, s: x if isinstance(x, optax.MaskedNode) else s, abstract_opt, p_sh,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    return TrainState(step=replicated(mesh), params=p_sh, opt_state=opt_sh)


def abstract_state(tx: optax.GradientTransformation, config: ModelConfig, mesh: Mesh) -> TrainState:
    """The train state as ShapeDtypeStructs with this mesh's shardings (for orbax restore)."""
    params = abstract_params(config, mesh)
    shapes = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(tx.init, params),
    )
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes, state_shardings(tx, config, mesh),
    )


def init_state(params: Params, tx: optax.GradientTransformation, config: ModelConfig, mesh: Mesh) -> TrainState:
    sh = state_shardings(tx, config, mesh)
    opt_state = jax.jit(tx.init, out_shardings=sh.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), sh.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


def _loss_sums(mdef: ModelDef, params: Params, batch: Batch, key, loss_chunk_size: int,
               mesh: Mesh | None = None):
    """(masked CE sum, mask count) of a batch: padded rows, or shaped by `batching.shape_batch`.

    Optional keys: `positions`/`segment_ids` (packed rows), and `loss_index` [B, K] (project
    only those positions onto the vocabulary; `targets`/`loss_mask` are then [B, K]) or
    `flat_index` [B, K] (the same, into each data shard's rows laid end to end).
    """
    model = mdef.merge(params)
    h = model.hidden(batch["inputs"], positions_BxT=batch.get("positions"),
                     segment_ids_BxT=batch.get("segment_ids"), deterministic=key is None, rngs=key,
                     mesh=mesh)
    if "loss_index" in batch:
        h = loss_lib.gather_positions(h, batch["loss_index"])
    elif "flat_index" in batch:
        h = loss_lib.gather_flat(h, batch["flat_index"], batch_shards(mesh))
    # Chunking bounds the [B, chunk, V] logits; a batch projecting fewer positions needs none.
    n = h.shape[1]
    chunk = loss_chunk_size if loss_chunk_size and loss_chunk_size < n and n % loss_chunk_size == 0 else 0
    return loss_lib.head_ce_sums(h, *model.output_head(), batch["targets"], batch["loss_mask"], chunk,
                                 mesh)


def _microbatches(batch: Batch, k: int, micro_sh: NamedSharding, means: bool) -> Batch:
    """The batch as [k, B/k, ...] (microbatch i = rows i::k, so each stays spread over the
    data shards), the mask weighted first for the mean of microbatch means (`means`)."""
    if means:
        batch = dict(batch, loss_mask=microbatch_weights(batch["loss_mask"], k))
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                         batch)
    return jax.lax.with_sharding_constraint(micro, jax.tree.map(lambda _: micro_sh, micro))


def microbatch_weights(mask_BxT: jax.Array, k: int) -> jax.Array:
    """The mask scaled so that its weighted loss sum is the mean of k microbatch means:
    row r of microbatch m = r // (B/k) weighs 1 / (k * max(count_m, 1)), count_m its
    microbatch's mask sum (the upstream's clamp). The counts are data, so the gradient is
    the upstream's too (each microbatch's mean divided by k, summed)."""
    B = mask_BxT.shape[0]
    count_K = jnp.sum(mask_BxT.reshape(k, B // k, -1), axis=(1, 2), dtype=jnp.float32)
    weight_B = jnp.repeat(1.0 / (k * jnp.maximum(count_K, 1.0)), B // k)
    return mask_BxT * weight_B[:, None].astype(mask_BxT.dtype)


def update_norm(updates: Any) -> jax.Array:
    """The applied update's global L2 norm, summed in float32: the step's finite-check input.

    It is non-finite when any element is NaN or inf (or beyond ~1e19, squares overflowing), so
    a finite norm with finite weights before means finite weights after: the host stops on a
    non-finite one before any save (observe/step_log.py). One reduction, no state.
    """
    return optax.tree.norm(jax.tree.map(lambda u: u.astype(jnp.float32), updates))


class TrainStep:
    """`step(state, batch) -> (state, metrics)` with the run's hyperparameters as inputs.

    The jitted function takes `(state, batch, hyper)`; this binds `hyper` (the run's float32
    scalars), so phases that differ only in those numbers run one compiled program.
    `lower(state, batch)` lowers it for an ahead-of-time compile; the compiled program is
    called as `compiled(state, batch, step.hyper)`.
    """

    def __init__(self, jitted, hyper: dict[str, jax.Array]):
        self.jitted, self.hyper = jitted, hyper

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.hyper)

    def lower(self, state, batch):
        return self.jitted.lower(state, batch, self.hyper)

    def _cache_size(self) -> int:
        return self.jitted._cache_size()


def make_train_step(
    mdef: ModelDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    seed: int,
    grad_accum_steps: int = 1,
    loss_chunk_size: int = 0,
    optimizer: optim.Optimizer | None = None,
    microbatch_means: bool = False,
):
    """`step(state, batch) -> (state, metrics)`, jitted over `mesh` with the state donated.

    Compiled once per batch shape (see batching.py for the shapes a run produces).

    The global batch is cut into `grad_accum_steps` microbatches (rows i::k) and scanned;
    loss numerators and mask counts are summed and divided once by max(total mask, 1), so
    any k gives the loss and gradient of the whole batch. `microbatch_means=True` is the
    newer upstream's loss instead (`microbatch_weights`): the mean of the k microbatch means,
    its microbatch m being rows [m*B/k, (m+1)*B/k). The dropout key of update i is
    fold_in(key(seed), i): no RNG state to checkpoint, and resume is exact.

    A `tx` that freezes parameters (freeze.py) gets the trainable view of the gradients
    only, so the accumulator, the gradient norm and the update exclude frozen rows, and the
    frozen rows of the parameters are never written.

    With `optimizer` (the spec `tx` and `schedule` were built from) the step is a
    `TrainStep`: `tx` is rebuilt inside it over its runtime hyperparameters.
    """
    k = grad_accum_steps
    base_key = jax.random.key(seed)
    state_sh = state_shardings(tx, mdef.config, mesh)
    micro_sh = NamedSharding(mesh, PartitionSpec(None, *batch_sharding(mesh).spec))

    def step(state: TrainState, batch: Batch, hyper=None):
        run_tx, run_schedule = (tx, schedule) if hyper is None else optimizer.build(hyper)
        freeze, inner_tx = freeze_lib.split(run_tx)
        key = jax.random.fold_in(base_key, state.step)
        tokens = jnp.sum(batch["loss_mask"], dtype=jnp.float32)
        micro = _microbatches(batch, k, micro_sh, microbatch_means)
        grad_fn = jax.value_and_grad(
            lambda p, b, kk: _loss_sums(mdef, freeze.stop_gradient(p), b, kk, loss_chunk_size,
                                        mesh),
            has_aux=True,
        )
        trainable = freeze.view(state.params)

        def body(carry, xs):
            g_acc, s_acc, c_acc = carry
            i, mb = xs
            (s, c), g = grad_fn(state.params, mb, jax.random.fold_in(key, i))
            g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, freeze.view(g))
            return (g_acc, s_acc + s, c_acc + c), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
        zero = jnp.zeros((), jnp.float32)
        (g_sum, loss_sum, count), _ = jax.lax.scan(
            body, (zeros, zero, zero), (jnp.arange(k), micro)
        )
        # The weighted mask already divides each microbatch by its count.
        denom = jnp.ones((), jnp.float32) if microbatch_means else jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), g_sum, trainable)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = inner_tx.update(grads, state.opt_state, trainable)
        params = freeze.apply_updates(state.params, updates)
        metrics = {
            "train_loss": loss_sum / denom,
            "grad_norm": grad_norm,
            "lr": run_schedule(state.step),
            "loss_tokens": tokens,
            "update_norm": update_norm(updates),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return _jitted(step, state_sh, mesh, optimizer)


def _jitted(step, state_sh: TrainState, mesh: Mesh, optimizer: optim.Optimizer | None):
    """`step` jitted with the state donated; with `optimizer`, a TrainStep over its inputs."""
    metrics_sh = replicated(mesh)
    if optimizer is None:
        return jax.jit(step, in_shardings=(state_sh, batch_sharding(mesh)),
                       out_shardings=(state_sh, metrics_sh), donate_argnums=(0,))
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sharding(mesh), replicated(mesh)),
                     out_shardings=(state_sh, metrics_sh), donate_argnums=(0,))
    return TrainStep(jitted, optimizer.hyper.arrays())


def make_eval_step(mdef: ModelDef, mesh: Mesh, *, loss_chunk_size: int = 0):
    """`eval_step(params, batch) -> (masked CE sum, mask count)`, deterministic."""
    p_sh = param_shardings(mdef.config, mesh)
    return jax.jit(
        lambda params, batch: _loss_sums(mdef, params, batch, None, loss_chunk_size, mesh),
        in_shardings=(p_sh, batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
