"""The upstream train.py command line: its flags and JSON config translated into our config.

    python -m mypt_jax.train --model_name phase3a1_alpha --dataset_dir data/sft_ready/phase3a1_alpha \\
        --init_from_model domain_v5_sft_ready --config_file configs/sft1/750M_phase3a1_alpha.json \\
        --eval_prompts_file configs/sft_eval/phase3a1_eval_prompts.json

Precedence, lowest first: `configs/base.py` (or the `--config` preset) < the JSON config file
< the upstream flags given < `--config.field=value` and `--workdir`. A flag counts when it is
given, whatever its value (the upstream compared with the flag's default instead, so a value
equal to the default could not override the file; and it ignored the architecture flags next
to a config file, where here they apply).

Names: `--model_name X` is the workdir `checkpoints/X`, and `--init_from_model X` is
`checkpoints/X` (an absolute path stays), as upstream, so the seed's later phases and
`python -m mypt_jax.generate --model X` find a run by its name. JSON fields map as `JSON_FIELDS`
and `_translated` say; a field this module does not know fails, naming the file and field.

Which upstream's loop the run reproduces, seed-era (24cc3fc) or newer (dc62a0c), follows the
recipe (`upstream_newer.semantics_for`) and is printed in the mapping line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_collections import config_dict

from mypt_jax.interop import upstream_newer

CHECKPOINTS = "checkpoints"  # where the upstream keeps runs by name
# JSON fields that are config fields of the same name.
JSON_FIELDS = (
    "batch_size", "block_size", "vocab_size", "n_embd", "n_head", "n_layer", "dropout", "bias",
    "tie_weights", "use_loss_mask", "batch_sampling_mode", "episode_min_tokens", "epoch_seed",
    "epoch_shuffle", "learning_rate", "max_iters", "eval_interval", "eval_iters", "warmup_iters",
    "grad_clip", "weight_decay", "log_file",
    # the newer upstream's (RoPE/SwiGLU/RMSNorm model, layer freezing)
    "pos_encoding", "mlp_type", "norm_type", "rope_theta", "rope_scale", "freeze_layers",
    "freeze_embeddings",
)
# JSON fields turned into other fields (`_translated`; `upstream_newer` for the last three).
TRANSLATED = ("use_amp", "amp_dtype", "use_checkpoint", "eval_sets", "grad_accum_steps",
              "token_accuracy_saturation", "gold_selection", "upstream_semantics")
# Read by the upstream and never used: accepted and left out here too.
UPSTREAM_IGNORED = {
    "pad_token_id": "the pad is always <myPT_eot>",
    "epoch_drop_last": "the loader never reads it",
    "save_dtype": "fit() always saves bf16",
    # Its phase4-6 recipes set 1000 against eval_interval 300/400; dc62a0c drops the key before
    # the model config is built and saves at every eval, and so do we (UPSTREAM_CADENCE).
    "save_every": "the upstream saves at every eval (eval_interval), whatever save_every says",
}
# The upstream's save cadence, for runs through its command line: a save at every eval (and
# the final one), none on wall-clock or step intervals, so its runs keep their files.
UPSTREAM_CADENCE = {"checkpoint_at_eval": True, "checkpoint_minutes": 0.0, "checkpoint_interval": 0}
# Used by the upstream, with nothing to set here.
NO_COUNTERPART = {
    "name": "printed only",
    "description": "printed only",
    "device": "JAX picks the backend",
    "eval_seed": "re-seeded torch's dropout RNG before each eval; dropout keys are fold_in(seed, step)",
}
# With --init_from_model the upstream took these from the init checkpoint, not the file. Here
# the file's values apply: the architecture must match the init's (config.check_architecture)
# and `--config.inherit_init_config=True` takes block_size and the loader fields from it.
INIT_OVERRIDDEN = ("block_size", "vocab_size", "n_embd", "n_head", "n_layer", "bias",
                   "use_checkpoint", "batch_sampling_mode", "episode_min_tokens", "epoch_seed",
                   "epoch_shuffle", "pos_encoding", "mlp_type", "norm_type")
# Upstream flags that set the config field of the same name when given.
_FLAG_FIELDS = {
    "max_iters": int, "eval_interval": int, "eval_iters": int, "learning_rate": float,
    "warmup_iters": float, "grad_clip": float, "weight_decay": float, "batch_size": int,
    "block_size": int, "n_embd": int, "n_head": int, "n_layer": int, "dropout": float,
    "dataset_dir": str, "eval_prompts_file": str, "eval_max_new_tokens": int,
}


class UpstreamConfigError(ValueError):
    """A flag or JSON field that cannot be translated; the message names it."""


@dataclasses.dataclass(frozen=True)
class Translation:
    overrides: dict[str, Any]  # config field -> value
    origins: dict[str, str]  # config field -> the flag or JSON file it came from (for errors)
    summary: str  # one line: where the JSON fields went and what the upstream ignored
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the JSON file's fields


# ----------------------------------------------------------------------------- flags


def _bool(text: str) -> bool:
    """The upstream's `type=bool` made every non-empty string True; here false means false."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The upstream flags, every default None so that a given flag can be told apart."""
    p = argparse.ArgumentParser(prog="python -m mypt_jax.train", add_help=False, allow_abbrev=False)
    p.add_argument("--model_name", help="the run lives in checkpoints/<model_name>")
    p.add_argument("--input_file", help="upstream in-memory text mode (not supported)")
    p.add_argument("--tokenization", choices=["gpt2", "char"])
    p.add_argument("--init_from_model", help="checkpoints/<name>, or an absolute path")
    p.add_argument("--eval_dataset_dir", help="an extra eval set, named general (eval_sets)")
    p.add_argument("--config_file", help="upstream JSON config")
    p.add_argument("--use_amp", type=_bool)
    p.add_argument("--amp_dtype", choices=["bf16", "fp16"])
    p.add_argument("--bias", action="store_true", default=None)
    p.add_argument("--save_dtype", choices=["fp32", "float32", "bf16", "bfloat16", "fp16", "float16"])
    for name, kind in _FLAG_FIELDS.items():
        p.add_argument(f"--{name}", type=kind)
    return p


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the upstream flags, everything else in order: --config, --config.x, --workdir, ...)."""
    return build_parser().parse_known_args(list(argv))


def given(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if v is not None}


def base_preset() -> str:
    """The file of configs/base.py: the preset under the upstream flags when --config is not given."""
    spec = importlib.util.find_spec("configs.base")
    if spec and spec.origin:
        return spec.origin
    return str(Path(__file__).resolve().parents[2] / "configs" / "base.py")


def config_overrides_in(argv: Sequence[str]) -> set[str]:
    """The fields named by `--config.field=value` (or `--config.field value`) arguments."""
    names = set()
    for arg in argv:
        if arg.startswith("--config."):
            names.add(arg[len("--config."):].split("=", 1)[0].split(".", 1)[0])
    return names


# ----------------------------------------------------------------------------- the JSON file


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UpstreamConfigError(f"--config_file {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UpstreamConfigError(f"--config_file {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise UpstreamConfigError(f"--config_file {path}: expected a JSON object of config fields")
    known = set(JSON_FIELDS) | set(TRANSLATED) | set(UPSTREAM_IGNORED) | set(NO_COUNTERPART)
    unknown = sorted(set(data) - known)
    if unknown:  # the upstream's GPTConfig(**rest) refused them too (TypeError)
        raise UpstreamConfigError(
            f"--config_file {path}: unknown field {unknown[0]!r}"
            + (f" (and {', '.join(map(repr, unknown[1:]))})" if unknown[1:] else "")
            + "; known fields are listed in mypt_jax/interop/upstream_cli.py")
    return data


def _precision(use_amp: bool, amp_dtype: str, where: str) -> str:
    if not use_amp:
        return "fp32"
    if amp_dtype == "fp16":
        raise UpstreamConfigError(
            f"{where}: amp_dtype 'fp16' (fp16 autocast with a loss scaler) has no counterpart here; "
            "use 'bf16' (precision 'mixed') or use_amp false (precision 'fp32')")
    return "mixed"  # float32 master weights, bf16 matmuls; the upstream's A100 run was bf16_pure


def _eval_sets(data: dict[str, Any], flags: dict[str, Any], where: str) -> str:
    """The file's eval_sets {name: dir} plus --eval_dataset_dir (the upstream named it
    "general", over the file's), as the config's "name=dir,..." (training/setup/eval_sets.py)."""
    sets = data.get("eval_sets") or {}
    if not isinstance(sets, dict):
        raise UpstreamConfigError(
            f"{where}: eval_sets: expected an object of name -> dataset directory, got {sets!r}")
    sets = dict(sets)
    if "eval_dataset_dir" in flags:
        sets["general"] = flags["eval_dataset_dir"]
    for name, path in sets.items():
        if not isinstance(path, str) or any(c in f"{name}{path}" for c in ",="):
            raise UpstreamConfigError(
                f"{where}: eval_sets: {name!r}: expected a set name and a directory path "
                f"without ',' or '=', got {path!r}")
    return ",".join(f"{name}={path}" for name, path in sets.items())


def _grad_accum(data: dict[str, Any], flags: dict[str, Any], where: str) -> dict[str, Any]:
    """The upstream's batch_size is per microbatch (grad_accum_steps of them per update); ours
    is per update, split into grad_accum_steps microbatches."""
    k = data["grad_accum_steps"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UpstreamConfigError(f"{where}: grad_accum_steps: expected an integer >= 1, got {k!r}")
    micro = flags.get("batch_size", data.get("batch_size"))
    if micro is None:
        raise UpstreamConfigError(
            f"{where}: grad_accum_steps {k}: the upstream's batch_size is per microbatch; give "
            "batch_size in the file or --batch_size, so that the batch per update is known")
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise UpstreamConfigError(f"{where}: batch_size: expected int, got {micro!r}")
    return {"grad_accum_steps": k, "batch_size": micro * k}


def _translated(data: dict[str, Any], flags: dict[str, Any], where: str) -> dict[str, Any]:
    """use_amp/amp_dtype -> precision, use_checkpoint -> remat, grad_accum_steps ->
    grad_accum_steps and the batch per update, eval_sets (and --eval_dataset_dir) -> eval_sets,
    the newer upstream's objects -> saturation_* and gold_* (upstream_newer)."""
    out: dict[str, Any] = {}
    try:
        out.update(upstream_newer.saturation(data, where))
        out.update(upstream_newer.gold(data, where))
    except upstream_newer.RecipeError as e:
        raise UpstreamConfigError(str(e)) from None
    if any(k in data or k in flags for k in ("use_amp", "amp_dtype")):
        use_amp = flags.get("use_amp", data.get("use_amp", True))  # the upstream defaults
        amp_dtype = flags.get("amp_dtype", data.get("amp_dtype", "bf16"))
        if not isinstance(use_amp, bool):
            raise UpstreamConfigError(f"{where}: use_amp: expected true or false, got {use_amp!r}")
        out["precision"] = _precision(use_amp, amp_dtype, where)
    if data.get("use_checkpoint"):
        out["remat"] = "full"  # the upstream's activation checkpointing, per block
    if "grad_accum_steps" in data:
        out.update(_grad_accum(data, flags, where))
    sets = _eval_sets(data, flags, where)
    if sets:
        out["eval_sets"] = sets
    return out


def resolve_init(name: str) -> str:
    """`checkpoints/<name>` as the upstream joined it (an absolute path stays as it is)."""
    path = os.path.join(CHECKPOINTS, name)
    if not os.path.exists(path):
        hint = (f"; {name} exists, but names are looked up under {CHECKPOINTS}/ as upstream: "
                f"pass --init_from_model {os.path.abspath(name)}" if os.path.exists(name) else "")
        raise UpstreamConfigError(f"--init_from_model {name}: {path} does not exist{hint}")
    return path


def resolve_model_path(name: str, legacy_checkpoint: str | None = None) -> Path:
    """A path as given, else checkpoints/<name> as upstream; an error names both tries."""
    tried = [Path(name), Path(CHECKPOINTS) / name]
    for path in tried:
        if path.exists():
            return path / legacy_checkpoint if legacy_checkpoint else path
    raise FileNotFoundError(
        f"model {name!r} not found: neither {tried[0]} nor {tried[1]} exists"
    )


# ----------------------------------------------------------------------------- translation


def translate(args: argparse.Namespace, *, check_init: bool = True) -> Translation:
    """The upstream flags (and the JSON file they name) as config overrides, lowest first.
    `check_init=False` takes `--init_from_model X` as checkpoints/X without looking there."""
    flags = given(args)
    if "input_file" in flags:
        raise UpstreamConfigError(
            "--input_file: the upstream's in-memory text mode is not supported; prepare the "
            "text as a dataset and pass --dataset_dir")
    if flags.get("tokenization", "gpt2") != "gpt2":
        raise UpstreamConfigError("--tokenization: only gpt2 (the Phase 3a tokenizer) is supported")
    where = f"--config_file {flags['config_file']}" if "config_file" in flags else "flags"
    data = read_json_config(flags["config_file"]) if "config_file" in flags else {}

    overrides: dict[str, Any] = {k: data[k] for k in JSON_FIELDS if k in data and data[k] is not None}
    overrides.update(_translated(data, flags, where))
    semantics, _ = upstream_newer.semantics_for(data)
    overrides["upstream_semantics"] = semantics
    origins = dict.fromkeys(overrides, where)
    overrides.update(UPSTREAM_CADENCE)
    origins.update(dict.fromkeys(UPSTREAM_CADENCE, "the upstream's save cadence"))
    from_flags = {k: v for k, v in flags.items() if k in _FLAG_FIELDS}
    if flags.get("bias"):
        from_flags["bias"] = True
    if "model_name" in flags:
        from_flags["workdir"] = os.path.join(CHECKPOINTS, flags["model_name"])
    if "init_from_model" in flags:
        name = flags["init_from_model"]
        from_flags["init_from"] = (resolve_init(name) if check_init
                                   else os.path.join(CHECKPOINTS, name))
    if "grad_accum_steps" in overrides and "batch_size" in from_flags:
        from_flags["batch_size"] = overrides["batch_size"]  # --batch_size is per microbatch too
    overrides.update(from_flags)
    origins.update({k: "flags" for k in from_flags})
    return Translation(overrides, origins, summary(data, flags, where), data)


def summary(data: dict[str, Any], flags: dict[str, Any], where: str) -> str:
    """One line: which JSON fields went where, which the upstream ignored, which have no use here."""
    if not data:
        return (f"upstream flags: {', '.join(sorted(flags))}; upstream_semantics 24cc3fc "
                "(no config file: the seed-era loop)")
    accum = "grad_accum_steps" in data
    same = [k for k in JSON_FIELDS if k in data and not (accum and k == "batch_size")]
    parts = [f"{where}: {', '.join(same)} -> the config fields of the same names"]
    if accum:
        batch = _grad_accum(data, flags, where)
        parts.append(f"batch_size x grad_accum_steps -> batch_size {batch['batch_size']} in "
                     f"{batch['grad_accum_steps']} microbatches (upstream: per microbatch)")
    if data.get("eval_sets"):
        parts.append(f"eval_sets -> eval_sets {_eval_sets(data, flags, where)!r}")
    amp = [k for k in ("use_amp", "amp_dtype") if k in data]
    if amp:
        parts.append(f"{'+'.join(amp)} -> precision {_translated(data, flags, where)['precision']!r}")
    if data.get("use_checkpoint"):
        parts.append("use_checkpoint -> remat 'full'")
    ignored = [k for k in UPSTREAM_IGNORED if k in data]
    if ignored:
        parts.append(f"ignored here as by the upstream: {', '.join(ignored)}")
    overridden = [k for k in INIT_OVERRIDDEN if k in data]
    if "init_from_model" in flags and overridden:
        parts.append(f"the upstream took {', '.join(overridden)} from the init model, here the "
                     "file's apply (the architecture must match the init's; "
                     "inherit_init_config=True takes block_size and the loader fields from it)")
    unused = [k for k in NO_COUNTERPART if k in data]
    if unused:
        parts.append(f"no use here: {', '.join(unused)}")
    return "; ".join([*parts, _semantics_part(data)])


def _semantics_part(data: dict[str, Any]) -> str:
    semantics, deciders = upstream_newer.semantics_for(data)
    why = ("set in the file" if deciders == ["upstream_semantics"] else
           f"the file carries {', '.join(deciders)}, which only the newer upstream reads"
           if deciders else "every field of the file is one the seed-era upstream read")
    text = f"upstream_semantics {semantics} ({why})"
    if semantics == "dc62a0c":
        text += (": cosine decay to 10% of learning_rate, the loss a mean of microbatch means, "
                 "evals of microbatches that also draw eval_iters training microbatches")
    return text


def apply(config: config_dict.ConfigDict, translation: Translation,
          keep: set[str]) -> config_dict.ConfigDict:
    """`config` with the overrides set, except fields in `keep` (set by --config.field)."""
    config = config_dict.ConfigDict(config.to_dict())
    for field, value in translation.overrides.items():
        if field in keep:
            continue
        where = translation.origins[field]
        if field not in config:
            raise UpstreamConfigError(f"{where}: {field}: not a field of this config (configs/base.py)")
        try:
            config[field] = value
        except TypeError:
            raise UpstreamConfigError(
                f"{where}: {field}: expected {type(config[field]).__name__}, got {value!r}") from None
    upstream_newer.defaults(config, config.upstream_semantics, translation.data, keep)
    return config


# ----------------------------------------------------------------------------- a command line


def from_argv(argv: Sequence[str], *, check_init: bool = True
              ) -> tuple[Translation | None, list[str], frozenset[str]]:
    """A command line's upstream flags, translated (None when it gives none); its other
    arguments, led by `--config=<configs/base.py>` when it gives upstream flags and no --config;
    and the fields its `--config.field` arguments set, which `apply` leaves as they are.

    `check_init=False` (the preflight, away from the run's files) takes `--init_from_model X`
    as checkpoints/X without looking for it there. Raises UpstreamConfigError.
    """
    args, rest = split_argv(argv)
    translation = None
    if given(args):
        translation = translate(args, check_init=check_init)
        if not any(a == "--config" or a.startswith("--config=") for a in rest):
            rest.insert(0, f"--config={base_preset()}")
    return translation, rest, frozenset(config_overrides_in(rest))
