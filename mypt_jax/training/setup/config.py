"""Training config: validation, precision and init-checkpoint resolution, before anything compiles.

The config (one flat ConfigDict, `configs/base.py`) is the source of truth. The upstream
silently took `block_size` and the loader fields (`epoch_seed`, `episode_min_tokens`,
`batch_sampling_mode`, `epoch_shuffle`) from the `--init_from_model` checkpoint, so its
Phase 3a runs used block 1024 and seed 1337 instead of the declared 512 and 4501-4504.
Here the config's values apply; `inherit_init_config=True` reproduces the upstream rule.

Every check raises `ConfigError` whose message starts with the offending field. `resolve`
checks the fields here and asks each stage to check what it owns: the dataset
(`data/loader.py`), the init checkpoint (`training/setup/init_source.py`) and the eval prompts
(`decoding/eval_prompts.py`); it returns one `Resolved` run description, which the trainer reads.

Paths: `workdir`, `log_file` and `init_from` may be remote URIs (`gs://bucket/run`, any scheme
`etils.epath` knows); `as_path` keeps a URI intact (pathlib would turn `gs://b` into `gs:/b`).
`dataset_dir` must be local: the episode files are memory-mapped.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ml_collections import config_dict

from mypt_jax.data import batching
from mypt_jax.data.episodes import DatasetError
from mypt_jax.data.paths import as_path
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.model.config import ConfigError as ModelConfigError
from mypt_jax.model.config import ModelConfig
from mypt_jax.model.param_table import param_logical_axes, param_shapes
from mypt_jax.parallel import sharding
from mypt_jax.parallel.device_mesh import DCN_FIELDS
from mypt_jax.training.setup import eval_sets, semantics
from mypt_jax.training.setup.init_source import (
    INHERITED_FIELDS,
    InitSource,
    InitSourceError,
    check_architecture,
    describe_init,
    token_map_diff,
)
from mypt_jax.training.step import freeze as freeze_lib
from mypt_jax.training.step.optim import warmup_steps

MODEL_FIELDS = (
    "block_size", "vocab_size", "n_embd", "n_head", "n_layer", "dropout", "bias", "tie_weights",
    "pos_encoding", "mlp_type", "norm_type", "rope_theta", "rope_scale", "param_dtype", "dtype",
    "remat", "scan_layers", "attention", "attention_prob_dropout",
)
# precision -> (param_dtype, compute dtype)
PRECISIONS = {
    "mixed": ("float32", "bfloat16"),
    "fp32": ("float32", "float32"),
    "bf16_pure": ("bfloat16", "bfloat16"),
}
_CHOICES = {
    "lr_schedule": ("constant", "cosine"),
    "precision": tuple(PRECISIONS),
    "batch_sampling_mode": ("epoch", "random"),
    "async_checkpointing": ("auto", "on", "off"),
    "compile_plan": ("auto", "exact"),
    "compile_background": ("auto", "on", "off"),
    "upstream_semantics": semantics.CHOICES,
    "gold_selection": ("", "val_loss", "hybrid", "external_gate"),
    "gold_gate_metric_goal": ("max", "min"),
}


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the field name."""


@dataclasses.dataclass(frozen=True)
class Resolved:
    config: config_dict.ConfigDict  # validated, with workdir/log_file/precision dtypes filled in
    model_config: ModelConfig
    tokenizer: Tokenizer
    mesh_shape: tuple[int, int, int]  # whole axes: per-slice sizes x mesh_dcn_shape
    warmup_steps: int
    init: InitSource | None
    notes: tuple[str, ...]  # deviations worth printing (inherited fields, sliced tables)
    mesh_dcn_shape: tuple[int, int, int] = (1, 1, 1)  # slices each mesh axis spans (of mesh_shape)


def default_fields() -> config_dict.ConfigDict:
    """configs/base.py: the one list of fields (importable from the repository root)."""
    try:
        from configs import base
    except ImportError:  # run from elsewhere: load it beside the package
        import importlib.util

        path = Path(__file__).resolve().parents[2] / "configs" / "base.py"
        spec = importlib.util.spec_from_file_location("_mypt_configs_base", path)
        base = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base)
    return base.get_config()


def model_config(config: config_dict.ConfigDict) -> ModelConfig:
    param_dtype, dtype = PRECISIONS[config.precision]
    values = {name: config[name] for name in MODEL_FIELDS}
    values["param_dtype"] = config.param_dtype or param_dtype
    values["dtype"] = config.dtype or dtype
    values["rope_theta"] = float(values["rope_theta"])
    values["rope_scale"] = float(values["rope_scale"])
    values["dropout"] = float(values["dropout"])
    try:
        return ModelConfig(**values)
    except ModelConfigError as e:
        raise ConfigError(str(e).removeprefix("model config ")) from None


# ----------------------------------------------------------------------------- validation


def _check_fields(config: config_dict.ConfigDict) -> None:
    known = default_fields()
    unknown = sorted(set(config.keys()) - set(known.keys()))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config field (known: see configs/base.py)")
    missing = sorted(set(known.keys()) - set(config.keys()))
    if missing:
        raise ConfigError(f"{missing[0]}: missing from the config")
    for name, default in known.items():
        value = config[name]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
    for name, allowed in _CHOICES.items():
        if config[name] not in allowed:
            raise ConfigError(f"{name}: expected one of {allowed}, got {config[name]!r}")
    positive = ("batch_size", "max_iters", "eval_interval", "eval_iters", "grad_accum_steps",
                "keep_checkpoints", "log_interval")
    for name in positive:
        if config[name] < 1:
            raise ConfigError(f"{name}: must be >= 1, got {config[name]}")
    for name in ("learning_rate", "min_lr", "grad_clip", "weight_decay", "warmup_iters",
                 "eval_max_new_tokens",
                 "loss_chunk_size", "checkpoint_interval", "keep_best", "adam_eps",
                 "prefetch_batches", "forgetting_factor", "compile_threads", "checkpoint_minutes",
                 "profiler_start_step", "profiler_num_steps", "saturation_min_steps",
                 "saturation_min_delta", "saturation_gap_threshold", "gold_overfit_ratio",
                 "gold_consecutive_rises", "gold_eval_regression"):
        if config[name] < 0:
            raise ConfigError(f"{name}: must be >= 0, got {config[name]}")
    if not 0 <= config.profiler_port <= 65535:
        raise ConfigError(f"profiler_port: expected 0 (off) or a port 1..65535, got "
                          f"{config.profiler_port}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= config[name] < 1.0:
            raise ConfigError(f"{name}: expected 0 <= {name} < 1, got {config[name]}")
    if config.lr_schedule == "cosine" and config.min_lr > config.learning_rate:
        raise ConfigError(f"min_lr: {config.min_lr} exceeds learning_rate {config.learning_rate}")
    if warmup_steps(config.warmup_iters, config.max_iters) > config.max_iters:
        raise ConfigError(f"warmup_iters: {config.warmup_iters} steps exceed max_iters {config.max_iters}")
    if config.precision == "bf16_pure" and (config.param_dtype or "bfloat16") != "bfloat16":
        raise ConfigError("param_dtype: precision='bf16_pure' stores bfloat16 weights")
    if config.loss_positions < batching.ALL_POSITIONS:
        raise ConfigError(f"loss_positions: expected -1 (all), 0 (automatic) or K > 0, got "
                          f"{config.loss_positions}")
    if config.loss_positions > config.block_size:
        raise ConfigError(f"loss_positions: {config.loss_positions} exceeds block_size {config.block_size}")
    if config.flat_head and config.grad_accum_steps > 1:
        raise ConfigError("flat_head: needs grad_accum_steps=1 (a microbatch takes every k-th "
                          f"row, not a data shard's rows); got {config.grad_accum_steps}")
    if config.loss_chunk_size and config.block_size % config.loss_chunk_size:
        raise ConfigError(
            f"loss_chunk_size: {config.loss_chunk_size} does not divide block_size {config.block_size}")
    try:
        batching.check_length_buckets(config.length_buckets, config.block_size)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    _check_accuracy(config)


def _check_accuracy(config) -> None:
    """The accuracy pass, its saturation flags, and what the dc62a0c loop cannot run with."""
    if (config.token_accuracy or config.saturation_check) and not config.use_loss_mask:
        field = "token_accuracy" if config.token_accuracy else "saturation_check"
        raise ConfigError(f"{field}: scores the trained (masked) tokens; needs use_loss_mask=True")
    if config.saturation_window < 2:
        raise ConfigError(f"saturation_window: expected >= 2 evals, got {config.saturation_window}")
    if semantics.microbatch_means(config) and config.pack_episodes:
        raise ConfigError(
            "pack_episodes: the dc62a0c loss averages each microbatch's rows (upstream_semantics); "
            "packing episodes into shared rows would mix its microbatches; set it False")


def _check_dcn(config, num_devices: int) -> tuple[int, ...]:
    """The slices each mesh axis spans; they must split the batch rows in slice order."""
    dcn = (config.mesh_dcn_data, config.mesh_dcn_fsdp, config.mesh_dcn_tensor)
    if any(d < 1 for d in dcn):
        raise ConfigError(f"{DCN_FIELDS}: expected slice counts >= 1 (1 = one slice), got {dcn}")
    if num_devices % math.prod(dcn):
        raise ConfigError(f"{DCN_FIELDS}: {dcn} makes {math.prod(dcn)} slices (their product), "
                          f"which do not divide the {num_devices} devices")
    # Each host loads its own rows (data/loader.global_batch): a tensor group spanning slices
    # would hold the same rows on two slices' hosts.
    if config.mesh_dcn_tensor > 1:
        raise ConfigError("mesh_dcn_tensor: tensor parallelism over DCN is not supported; "
                          f"expected 1, got {config.mesh_dcn_tensor} (span slices with mesh_dcn_data)")
    return dcn


def _check_mesh(config, mc: ModelConfig, num_devices: int, process_count: int
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(whole mesh shape, slices per axis); mesh_data/fsdp/tensor are per slice, -1 included."""
    dcn = _check_dcn(config, num_devices)
    slices = math.prod(dcn)
    sizes = (config.mesh_data, config.mesh_fsdp, config.mesh_tensor)
    try:
        ici = sharding.resolve_mesh_shape(sizes, num_devices // slices)
    except ValueError as e:
        per_slice = f" (per slice: {slices} slices, {DCN_FIELDS})" if slices > 1 else ""
        raise ConfigError(f"mesh_data/mesh_fsdp/mesh_tensor: {e}{per_slice}") from None
    if config.mesh_dcn_fsdp > 1 and ici[0] > 1:
        # Slices along fsdp inside several data rows would interleave the hosts' rows.
        raise ConfigError(f"mesh_dcn_fsdp: {config.mesh_dcn_fsdp} slices on the fsdp axis need "
                          f"mesh_data to resolve to 1 per slice, got {ici[0]} (or use mesh_dcn_data)")
    shape = tuple(i * d for i, d in zip(ici, dcn, strict=True))
    axis_size = dict(zip(sharding.MESH_AXES, shape, strict=True))
    batch_ways = axis_size["data"] * axis_size["fsdp"]
    micro = config.batch_size // config.grad_accum_steps
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f"grad_accum_steps: {config.grad_accum_steps} does not divide batch_size {config.batch_size}"
        )
    if micro % batch_ways:
        slices_note = (f" (mesh_data * mesh_dcn_data) * (mesh_fsdp * mesh_dcn_fsdp) = "
                       f"{ici[0]}*{dcn[0]} * {ici[1]}*{dcn[1]}" if slices > 1 else "")
        raise ConfigError(
            f"batch_size: the microbatch of {micro} rows (batch_size / grad_accum_steps) is not "
            f"divisible by mesh_data * mesh_fsdp = {batch_ways}{slices_note}"
        )
    if config.batch_size % process_count:
        raise ConfigError(f"batch_size: {config.batch_size} not divisible by {process_count} processes")
    if semantics.eval_rows(config) % process_count:
        raise ConfigError(f"batch_size: the dc62a0c evals read microbatches of {micro} rows, "
                          f"not divisible by {process_count} processes")
    # Every sharded parameter dimension must split evenly over its mesh axes.
    shapes, axes = param_shapes(mc), param_logical_axes(mc)
    flat = [("", shapes, axes)]
    while flat:
        prefix, s, a = flat.pop()
        for name in s:
            if isinstance(s[name], dict):
                flat.append((f"{prefix}{name}.", s[name], a[name]))
                continue
            spec = sharding.logical_to_spec(a[name])
            for dim, mesh_axes in zip(s[name], spec, strict=False):
                names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
                ways = math.prod(axis_size[n] for n in names)
                if dim % ways:
                    raise ConfigError(
                        f"mesh_{names[0]}: parameter {prefix}{name} {tuple(s[name])} has a "
                        f"dimension of {dim} that {'x'.join(names)}={ways} devices cannot split "
                        "(change the mesh or the model width/heads/vocab)"
                    )
    return shape, dcn


def mesh_for(r: Resolved, devices=None):
    """The run's mesh (`sharding.make_mesh`) over `devices` (default: all), with its slices."""
    try:
        return sharding.make_mesh(r.mesh_shape, devices, dcn=r.mesh_dcn_shape)
    except ValueError as e:  # device_mesh.MeshError names the fields
        raise ConfigError(str(e)) from None


def _check_freeze(config, mc: ModelConfig) -> list[str]:
    """freeze_layers within the model; what is frozen, as notes."""
    if not 0 <= config.freeze_layers <= mc.n_layer:
        raise ConfigError(f"freeze_layers: expected 0 to n_layer ({mc.n_layer}) blocks, got "
                          f"{config.freeze_layers}")
    # A resume with other freezing is refused where the checkpoint is read (training/setup/resume.py).
    freeze = freeze_lib.Freeze(layers=config.freeze_layers, embeddings=config.freeze_embeddings)
    return freeze_lib.notes(freeze, param_shapes(mc), mc.n_layer, mc.tie_weights)


def _check_dataset(config) -> Tokenizer:
    from mypt_jax.data import loader

    if not config.dataset_dir:
        raise ConfigError("dataset_dir: empty; point it at a prepared dataset")
    try:
        tok = loader.check_for_run(config.dataset_dir, use_loss_mask=config.use_loss_mask,
                                   pack_episodes=config.pack_episodes)
    except DatasetError as e:
        raise ConfigError(f"dataset_dir: {e}") from None
    if tok.model_vocab_size > config.vocab_size:
        raise ConfigError(
            f"vocab_size: {config.vocab_size} is smaller than the dataset's token space "
            f"{tok.model_vocab_size}"
        )
    return tok


def _check_eval_prompts(config, tok: Tokenizer) -> str | None:
    """Reads the eval prompts; fills in eval_max_new_tokens=0 (a note when block_size caps it)."""
    if not config.eval_prompts_file:
        return None
    from mypt_jax.decoding import eval_prompts

    try:
        prompts = eval_prompts.load_eval_prompts(config.eval_prompts_file)
    except eval_prompts.EvalPromptsError as e:
        raise ConfigError(f"eval_prompts_file: {e}") from None
    if config.eval_max_new_tokens >= config.block_size:
        raise ConfigError(
            f"eval_max_new_tokens: {config.eval_max_new_tokens} leaves no room for the eval "
            f"prompts: block_size is {config.block_size} (0 = fit the default to block_size)")
    if config.eval_max_new_tokens:
        return None
    config.eval_max_new_tokens, note = eval_prompts.new_tokens_within(
        prompts, tok, config.block_size, name="eval_max_new_tokens")
    return note


def _describe_init(config, notes: list[str], init: InitSource | None = None) -> InitSource:
    """Reads `init_from` (unless described already); with inherit_init_config, takes the
    fields the upstream took from it."""
    try:
        init = init or describe_init(config.init_from)
    except InitSourceError as e:
        raise ConfigError(str(e)) from None
    if config.inherit_init_config:
        for name in INHERITED_FIELDS:
            value = init.model_config.block_size if name == "block_size" else init.fields.get(name)
            if value is not None and value != config[name]:
                notes.append(f"{name}: {value!r} from init_from (config said {config[name]!r})")
                config[name] = value
    return init


def _check_architecture(init: InitSource, mc: ModelConfig) -> list[str]:
    try:
        return check_architecture(mc, init.model_config, "init_from")
    except InitSourceError as e:
        raise ConfigError(str(e)) from None


def _check_token_map(init: InitSource, tok: Tokenizer) -> None:
    diff = token_map_diff(tok, init.tokenizer) if init.tokenizer is not None else []
    if diff:
        raise ConfigError(
            "init_from: token map differs from the dataset's (dataset != init): " + "; ".join(diff)
        )


def resolve(
    config: config_dict.ConfigDict,
    workdir: str | None = None,
    *,
    num_devices: int | None = None,
    process_count: int | None = None,
    read_files: bool = True,
    init: InitSource | None = None,
) -> Resolved:
    """Validates `config` and resolves derived values; raises ConfigError naming the field.

    `read_files=False` (the preflight, on a machine without the run's files): `init_from`
    and the dataset are not read; the tokenizer is the dataset's where it exists, else the
    newer upstream token map. `init`: what `init_from` holds, described already (the
    curriculum's in-memory hand-off, whose final checkpoint may still be being written);
    checked against the config as one read from `init_from` is.
    """
    config = config_dict.ConfigDict(config.to_dict())  # an unlocked copy we may fill in
    _check_fields(config)
    if workdir:
        config.workdir = str(workdir)
    if not config.workdir:
        raise ConfigError("workdir: empty; pass --workdir or set config.workdir")
    if not config.log_file:
        config.log_file = str(as_path(config.workdir) / "log.jsonl")
    notes: list[str] = []

    if init is not None or (config.init_from and read_files):
        init = _describe_init(config, notes, init)
    mc = model_config(config)
    config.param_dtype, config.dtype = mc.param_dtype, mc.dtype
    if init is not None:
        notes += _check_architecture(init, mc)
    notes += _check_freeze(config, mc)

    if num_devices is None or process_count is None:
        import jax

        num_devices = jax.device_count() if num_devices is None else num_devices
        process_count = jax.process_count() if process_count is None else process_count
    mesh_shape, mesh_dcn_shape = _check_mesh(config, mc, num_devices, process_count)
    if read_files:
        tok = _check_dataset(config)
        try:  # each extra eval set: its val split on disk (training/setup/eval_sets.py)
            eval_sets.check(config.eval_sets)
        except eval_sets.EvalSetsError as e:
            raise ConfigError(str(e)) from None
    else:
        from mypt_jax.data import loader

        tok = loader.tokenizer_if_any(config.dataset_dir)
    if init is not None:
        _check_token_map(init, tok)
    note = _check_eval_prompts(config, tok)
    notes += [note] if note else []
    return Resolved(
        config=config,
        model_config=mc,
        tokenizer=tok,
        mesh_shape=mesh_shape,
        mesh_dcn_shape=mesh_dcn_shape,
        warmup_steps=warmup_steps(config.warmup_iters, config.max_iters),
        init=init,
        notes=tuple(notes),
    )
