"""The newer upstream's sft recipes (chberclaz/MyPT dc62a0c) on our command line:
which loop semantics a recipe gets, and its `token_accuracy_saturation` and `gold_selection`
objects as our flat config fields.

The rule, in one sentence: a JSON file that carries a field the seed-era upstream (24cc3fc)
did not read is a dc62a0c recipe, and every other command line is a seed-era one; a file's own
`upstream_semantics` field, or `--config.upstream_semantics`, overrides it.
"""

from __future__ import annotations

from typing import Any

# Every field the seed-era train.py read from a JSON file (its GPTConfig and training keys).
SEED_ERA_FIELDS = frozenset((
    "name", "description", "batch_size", "block_size", "vocab_size", "n_embd", "n_head",
    "n_layer", "dropout", "bias", "use_checkpoint", "device", "use_loss_mask", "tie_weights",
    "save_dtype", "batch_sampling_mode", "pad_token_id", "episode_min_tokens", "epoch_seed",
    "epoch_shuffle", "epoch_drop_last", "learning_rate", "max_iters", "eval_interval",
    "eval_iters", "warmup_iters", "grad_clip", "weight_decay", "use_amp", "amp_dtype",
    "eval_sets", "eval_seed", "log_file",
))
# dc62a0c's minimum learning rate after its cosine decay, as a fraction of the peak.
MIN_LR_FRACTION = 0.1
# token_accuracy_saturation key -> our field (None: its default follows use_loss_mask).
SATURATION_FIELDS = {
    "enabled": "saturation_check", "window": "saturation_window",
    "min_steps_before_check": "saturation_min_steps", "min_delta": "saturation_min_delta",
    "gap_growth_threshold": "saturation_gap_threshold",
}
GOLD_FIELDS = {"strategy": "gold_selection", "apply_loss_guards": "gold_loss_guards"}
GUARD_FIELDS = {"overfit_ratio": "gold_overfit_ratio", "consecutive_rises": "gold_consecutive_rises",
                "eval_regression": "gold_eval_regression"}
GATE_FIELDS = {
    "script": "gold_gate_script", "args": "gold_gate_args", "timeout_s": "gold_gate_timeout_s",
    "run_interval_evals": "gold_gate_interval_evals", "run_on_final_eval": "gold_gate_on_final",
    "metric_path": "gold_gate_metric_path", "metric_goal": "gold_gate_metric_goal",
    "pass_path": "gold_gate_pass_path", "require_pass": "gold_gate_require_pass",
    "strict": "gold_gate_strict",
}


class RecipeError(ValueError):
    """A newer-upstream object that cannot be translated; the message names the key."""


def semantics_for(data: dict[str, Any]) -> tuple[str, list[str]]:
    """(the recipe's semantics, the fields that decided it), by the module's rule."""
    if data.get("upstream_semantics"):
        return str(data["upstream_semantics"]), ["upstream_semantics"]
    newer = sorted(k for k in data if k not in SEED_ERA_FIELDS and k != "upstream_semantics")
    return ("dc62a0c" if newer else "24cc3fc"), newer


def _object(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: {key}: expected an object, got {value!r}")
    return value


def _mapped(obj: dict[str, Any], table: dict[str, str], where: str, allowed=()) -> dict[str, Any]:
    unknown = sorted(set(obj) - set(table) - set(allowed))
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(table)})")
    return {table[k]: v for k, v in obj.items() if k in table}


def saturation(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`token_accuracy_saturation` as saturation_* fields (`enabled` absent: see `defaults`)."""
    obj = _object(data, "token_accuracy_saturation", where)
    where = f"{where}: token_accuracy_saturation"
    action = obj.get("action", "log_and_flag")
    if action != "log_and_flag":
        raise RecipeError(f"{where}: action {action!r}: only 'log_and_flag' exists (the "
                          "upstream has no other)")
    return _mapped(obj, SATURATION_FIELDS, where, allowed=("action",))


def gold(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`gold_selection` as gold_* fields; a gate that is not `enabled` is no gate script."""
    obj = _object(data, "gold_selection", where)
    if not obj:
        return {}
    where = f"{where}: gold_selection"
    out = _mapped(obj, GOLD_FIELDS, where, allowed=("guards", "external_gate"))
    out.setdefault("gold_selection", "val_loss")  # the upstream's default strategy
    out.update(_mapped(_object(obj, "guards", where), GUARD_FIELDS, f"{where}.guards"))
    gate = _object(obj, "external_gate", where)
    out.update(_mapped(gate, GATE_FIELDS, f"{where}.external_gate", allowed=("enabled",)))
    if not gate.get("enabled", False):
        out["gold_gate_script"] = ""
    if "gold_gate_args" in out:
        if not isinstance(out["gold_gate_args"], list):
            raise RecipeError(f"{where}.external_gate: args: expected a list of strings")
        out["gold_gate_args"] = tuple(str(a) for a in out["gold_gate_args"])
    return out


def defaults(config, semantics: str, data: dict[str, Any], keep: set[str]) -> None:
    """The dc62a0c defaults that follow other fields' final values, set on `config` unless
    the command line set them (`keep`): its cosine decay to MIN_LR_FRACTION of the peak, and
    the saturation check on whenever the loss mask is (the upstream's default)."""
    if semantics != "dc62a0c":
        return
    for field, value in (("lr_schedule", "cosine"),
                         ("min_lr", MIN_LR_FRACTION * config.learning_rate)):
        if field not in keep:
            config[field] = value
    explicit = "enabled" in _object(data, "token_accuracy_saturation", "")
    if "saturation_check" not in keep and not explicit:
        config.saturation_check = bool(config.use_loss_mask)
