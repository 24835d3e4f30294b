"""The upstream train.py command line: the seed's Step 3 commands, translated and run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import train_helpers

from configs import base, phase3a1_alpha, phase3a1_beta, phase3a1_gamma, phase3a2
from mypt_jax.interop import upstream_cli

REPO = train_helpers.REPO
SFT1 = REPO / "configs" / "sft1"
EVAL_PROMPTS = "configs/sft_eval/phase3a1_eval_prompts.json"
# The seed document's four Step 3 commands: model name, init model, JSON config.
SEED_STEP3 = {
    phase3a1_alpha: ("phase3a1_alpha", "domain_v5_sft_ready", "750M_phase3a1_alpha.json"),
    phase3a1_beta: ("phase3a1_beta", "phase3a1_alpha", "750M_phase3a1_beta.json"),
    phase3a1_gamma: ("phase3a1_gamma", "phase3a1_beta", "750M_phase3a1_gamma.json"),
    phase3a2: ("phase3a2", "phase3a1_gamma", "750M_phase3a2.json"),
}


def seed_argv(name: str, init: str, config_file: str, prepared: str | None = None) -> list[str]:
    return ["--model_name", name, "--dataset_dir", f"data/sft_ready/{prepared or name}",
            "--init_from_model", init, "--config_file", config_file,
            "--eval_prompts_file", EVAL_PROMPTS]


def _translate(argv: list[str], keep: set[str] = frozenset(), preset=None):
    args, rest = upstream_cli.split_argv(argv)
    translation = upstream_cli.translate(args)
    return upstream_cli.apply(preset or base.get_config(), translation, set(keep)), translation, rest


def test_seed_json_configs_train_as_our_phase_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _, init, _ in SEED_STEP3.values():
        (tmp_path / "checkpoints" / init).mkdir(parents=True, exist_ok=True)
    for preset, (name, init, json_name) in SEED_STEP3.items():
        config, translation, rest = _translate(seed_argv(name, init, str(SFT1 / json_name)))
        ours = preset.get_config()
        differ = {k for k in ours.keys() if config[k] != ours[k]}
        # Only where the run lives (the upstream keeps runs by name under checkpoints/) and
        # how it runs: the presets carry the preflight's mesh and remat for the 750M step
        # (launch/README.md), which change neither the batches nor the function trained.
        # And when it saves: the upstream's cadence, a save at every eval and no other.
        assert differ <= {"workdir", "init_from", "mesh_data", "mesh_fsdp", "remat",
                          "checkpoint_minutes", "checkpoint_at_eval"}, {
            k: (config[k], ours[k]) for k in differ}
        assert (config.checkpoint_at_eval, config.checkpoint_minutes,
                config.checkpoint_interval) == (True, 0.0, 0)
        assert config.workdir == f"checkpoints/{name}" and config.init_from == f"checkpoints/{init}"
        assert Path(ours.init_from).name == init and rest == []
        assert "\n" not in translation.summary


def test_precedence_base_json_flag_then_config_override(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rate": 1e-4, "max_iters": 7, "epoch_seed": 9,
                                "eval_iters": 3, "use_amp": True}))
    argv = ["--config_file", str(path), "--max_iters", "8", "--eval_iters", "200",
            "--config.eval_iters=5", "--workdir=w"]
    config, _, rest = _translate(argv, keep=upstream_cli.config_overrides_in(argv))
    assert rest == ["--config.eval_iters=5", "--workdir=w"]  # absl's: applied before, kept
    assert config.grad_clip == base.get_config().grad_clip  # base: neither file nor flag
    assert (config.learning_rate, config.epoch_seed) == (1e-4, 9)  # the file
    assert config.max_iters == 8  # a flag beats the file
    assert config.eval_iters == base.get_config().eval_iters  # --config.eval_iters is kept
    # A flag counts when given, even with the upstream's default value (there: ignored).
    assert _translate(["--config_file", str(path), "--eval_iters", "200"])[0].eval_iters == 200
    preset = base.get_config()
    preset.batch_size = 3  # a --config preset sits under the file
    assert _translate(["--config_file", str(path)], preset=preset)[0].batch_size == 3


def test_amp_flags_map_to_precision(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"use_amp": True, "amp_dtype": "bf16", "use_checkpoint": True}))
    config, translation, _ = _translate(["--config_file", str(path)])
    assert (config.precision, config.remat) == ("mixed", "full")
    assert "use_amp+amp_dtype -> precision 'mixed'" in translation.summary
    assert _translate(["--config_file", str(path), "--use_amp", "False"])[0].precision == "fp32"
    with pytest.raises(upstream_cli.UpstreamConfigError, match="amp_dtype 'fp16'"):
        _translate(["--config_file", str(path), "--amp_dtype", "fp16"])


def test_summary_says_where_fields_went_and_what_the_upstream_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "domain_v5_sft_ready").mkdir(parents=True)
    argv = seed_argv("phase3a1_alpha", "domain_v5_sft_ready", str(SFT1 / "750M_phase3a1_alpha.json"))
    summary = _translate(argv)[1].summary
    assert summary.startswith(f"--config_file {SFT1 / '750M_phase3a1_alpha.json'}: batch_size, "
                              "block_size, vocab_size, n_embd, n_head, n_layer, dropout, bias, "
                              "tie_weights, use_loss_mask, batch_sampling_mode, episode_min_tokens, "
                              "epoch_seed, epoch_shuffle, learning_rate, max_iters, eval_interval, "
                              "warmup_iters, weight_decay, log_file -> the config fields of the "
                              "same names; use_amp+amp_dtype -> precision 'mixed'; ")
    assert "ignored here as by the upstream: pad_token_id, epoch_drop_last" in summary
    assert "the upstream took block_size, vocab_size" in summary and "inherit_init_config" in summary
    assert "no use here: name, description, eval_seed" in summary


@pytest.mark.parametrize(("content", "message"), [
    ({"learning_rate": 1e-4, "lerning_rate": 1e-4}, r"unknown field 'lerning_rate'"),
    ({"max_iters": 3.5}, r"max_iters: expected int, got 3\.5"),
    ({"eval_sets": ["data/x"]}, r"eval_sets: expected an object of name -> dataset directory"),
    ({"eval_sets": {"a,b": "data/x"}}, r"eval_sets: 'a,b': expected a set name and a directory"),
    ([1], "expected a JSON object"),
])
def test_json_fields_we_cannot_use_are_named(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    with pytest.raises(upstream_cli.UpstreamConfigError, match=message) as info:
        _translate(["--config_file", str(path)])
    assert str(path) in str(info.value)


def test_flag_errors_name_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "alpha").mkdir(parents=True)
    with pytest.raises(upstream_cli.UpstreamConfigError,
                       match=r"--init_from_model runs/alpha: checkpoints/runs/alpha does not exist; "
                             r"runs/alpha exists, but names are looked up under checkpoints/"):
        _translate(["--init_from_model", "runs/alpha"])
    assert _translate(["--init_from_model", str(tmp_path / "runs" / "alpha")])[0].init_from == str(
        tmp_path / "runs" / "alpha")  # an absolute path stays, as os.path.join keeps it
    for argv, message in ((["--input_file", "x.txt"], "--input_file"),
                          (["--tokenization", "char"], "--tokenization")):
        with pytest.raises(upstream_cli.UpstreamConfigError, match=message):
            _translate(argv)
    with pytest.raises(SystemExit):
        upstream_cli.split_argv(["--use_amp", "maybe"])


def test_eval_sets_and_eval_dataset_dir_land_in_eval_sets(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"eval_sets": {"general": "data/g", "domain": "data/d"}}))
    config, translation, _ = _translate(["--config_file", str(path)])
    assert config.eval_sets == "general=data/g,domain=data/d"
    assert "eval_sets -> eval_sets 'general=data/g,domain=data/d'" in translation.summary
    # the upstream's --eval_dataset_dir is the set "general", over the file's
    assert _translate(["--config_file", str(path), "--eval_dataset_dir", "data/x"])[0].eval_sets == (
        "general=data/x,domain=data/d")
    assert _translate(["--eval_dataset_dir", "data/x"])[0].eval_sets == "general=data/x"
    path.write_text(json.dumps({"eval_sets": None}))
    assert _translate(["--config_file", str(path)])[0].eval_sets == base.get_config().eval_sets


# ----------------------------------------------------------------------------- end to end

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 64, "dropout": 0.0, "bias": False,
        "tie_weights": True, "vocab_size": 50304}


def _tiny_json(path: Path, **fields) -> None:
    """An upstream-style config with every field of the seed's, sized for a CPU."""
    seed = json.loads((SFT1 / path.name).read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**seed, **TINY, "batch_size": 4, "max_iters": 2, "eval_interval": 2,
                                "eval_iters": 1, "warmup_iters": 1, "learning_rate": 1e-3,
                                "use_amp": False, **fields}))


def _train(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=train_helpers.xla_flags(1))
    return subprocess.run([sys.executable, "-m", "mypt_jax.train", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_seed_step3_commands_run_as_written(tmp_path, monkeypatch):
    """The seed's alpha and beta Step 3 commands with tiny JSON configs at the seed's paths,
    then its Step 4 command, each with only the program name swapped."""
    from flax import nnx

    from mypt_jax import generate
    from mypt_jax.data.prepare import prepare
    from mypt_jax.data.tokenizer import Tokenizer
    from mypt_jax.interop import model_io
    from mypt_jax.model import GPT, ModelConfig

    monkeypatch.chdir(tmp_path)
    chat = train_helpers.write_chat_jsonl(tmp_path / "chat.jsonl", 40)
    for phase in ("phase3a1_alpha", "phase3a1_beta"):
        prepare(chat, tmp_path / "data" / "sft_ready" / phase, val_split=0.2, progress=False)
    config = ModelConfig(**TINY)
    model_io.save_model(tmp_path / "checkpoints" / "domain_v5_sft_ready",
                        GPT(config, rngs=nnx.Rngs(0)), config, Tokenizer())
    (tmp_path / EVAL_PROMPTS).parent.mkdir(parents=True)
    shutil.copy(REPO / EVAL_PROMPTS, tmp_path / EVAL_PROMPTS)
    _tiny_json(tmp_path / "configs/sft1/750M_phase3a1_alpha.json")
    _tiny_json(tmp_path / "configs/sft1/750M_phase3a1_beta.json")

    out = _train(tmp_path, seed_argv("phase3a1_alpha", "domain_v5_sft_ready",
                                     "configs/sft1/750M_phase3a1_alpha.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--config_file configs/sft1/750M_phase3a1_alpha.json: batch_size, " in out.stderr
    meta = json.loads(sorted((tmp_path / "checkpoints/phase3a1_alpha/checkpoints").glob(
        "*/meta/metadata"))[-1].read_text())
    c = meta["config"]
    assert (c["epoch_seed"], c["episode_min_tokens"], c["learning_rate"], c["precision"]) == (
        4501, 10, 1e-3, "fp32")
    assert (c["init_from"], c["eval_prompts_file"]) == ("checkpoints/domain_v5_sft_ready", EVAL_PROMPTS)
    assert (tmp_path / "logs/train/phase3a1_alpha.jsonl").is_file()  # the JSON's log_file

    out = _train(tmp_path, seed_argv("phase3a1_beta", "phase3a1_alpha",
                                     "configs/sft1/750M_phase3a1_beta.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "checkpoints/phase3a1_beta/model/config.json").is_file()

    prompt = ("<myPT_system>You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly."
              "</myPT_system><myPT_user>Say hello.</myPT_user><myPT_assistant>")
    assert generate.main(["--model", "phase3a1_beta", "--prompt", prompt, "--temperature", "0"]) == 0


# ----------------------------------------------------------------------------- newer upstream JSONs

FIXTURES = REPO / "tests" / "fixtures" / "upstream_configs"  # see its README.md
SHRUNK = {"block_size": 64, "vocab_size": 50304, "n_embd": 32, "n_head": 2, "n_layer": 4,
          "bias": False, "tie_weights": True}
# Every run through the upstream command line saves at every eval, as dc62a0c does (it reads
# save_every and never uses it: its phase4-6 files say 1000 against eval_interval 300/400).
CADENCE = {"checkpoint_at_eval": True, "checkpoint_minutes": 0.0, "checkpoint_interval": 0}
NEWER = {**SHRUNK, **CADENCE, "pos_encoding": "rope", "mlp_type": "swiglu", "norm_type": "rmsnorm",
         "rope_theta": 10000.0, "precision": "mixed", "use_loss_mask": True,
         "batch_sampling_mode": "epoch", "episode_min_tokens": 10, "epoch_shuffle": True,
         "weight_decay": 0.05}
# The fixture's fields as config overrides; pad_token_id and epoch_drop_last are dropped (the
# upstream ignored them), name/description/eval_seed have no use, eval_sets is null.
ACCEPTED = {
    "phase2_operators.json": {
        **NEWER, "dropout": 0.08, "remat": "full", "rope_scale": 4.0, "learning_rate": 3e-5,
        "max_iters": 135, "eval_interval": 15, "warmup_iters": 14, "grad_accum_steps": 4,
        "batch_size": 16, "epoch_seed": 7778, "log_file": "logs/train/phase2_operators.jsonl",
        "eval_sets": "phase1_format=data/sft_phase1_format_lock,general=data/general,"
                     "domain=data/domain_161M_corpus_tokenized,code=data/code_eval_tokenized,"
                     "retrieval=data/retrieval_eval_tokenized"},
    "phase3_chat_sft.json": {
        **NEWER, "dropout": 0.12, "remat": "full", "rope_scale": 4.0, "learning_rate": 3e-5,
        "max_iters": 763, "eval_interval": 50, "warmup_iters": 100,
        "grad_accum_steps": 3, "batch_size": 12, "epoch_seed": 3301,
        "log_file": "logs/train/phase3_chat_sft.jsonl",
        "eval_sets": "phase1_format=data/sft_phase1_format_lock,"
                     "phase2_operators=data/sft_phase2_operators,"
                     "phase2_remix_existing=data/sft_phase3_eval_phase2_remix"},
    "phase1_format_lock.json": {
        **NEWER, "dropout": 0.1, "remat": "full", "rope_scale": 4.0, "learning_rate": 7e-5,
        "max_iters": 15, "eval_interval": 5, "warmup_iters": 2, "grad_accum_steps": 4,
        "batch_size": 16, "epoch_seed": 4501, "log_file": "logs/train/phase1_format_lock.jsonl"},
    "750M_phase3a_operator_packed.json": {
        **NEWER, "dropout": 0.08, "learning_rate": 3e-5, "max_iters": 1200, "eval_interval": 100,
        "warmup_iters": 120, "batch_size": 16, "freeze_layers": 3, "freeze_embeddings": False,
        "epoch_seed": 7778, "log_file": "logs/train/phase3a_operator_packed.jsonl"},
}
# dc62a0c's gold_selection object as phase2_8b_echo_rebalance.json writes it.
GOLD = {"strategy": "external_gate", "apply_loss_guards": True,
        "guards": {"overfit_ratio": 6.0, "consecutive_rises": 3, "eval_regression": 0.25},
        "external_gate": {"enabled": True, "script": "scripts/eval/eval_phase2_8_bridge.py",
                          "args": ["--model", "{model_name}", "--output", "{output_json}",
                                   "--no_system_prompt"],
                          "timeout_s": 1200, "run_interval_evals": 1, "run_on_final_eval": False,
                          "metric_path": "hard_avg_rate", "metric_goal": "max",
                          "pass_path": "gate_passed", "require_pass": False, "strict": False}}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_newer_upstream_configs_map_field_by_field(name, tmp_path):
    from flax import nnx

    from mypt_jax.model import GPT
    from mypt_jax.training.setup import config as cfg_lib

    path = FIXTURES / name
    config, translation, _ = _translate(["--config_file", str(path)])
    assert translation.overrides == {**ACCEPTED[name], "upstream_semantics": "dc62a0c"}
    # dc62a0c's cosine to 10% of the peak, and its saturation check on with the loss mask.
    assert (config.lr_schedule, config.min_lr, config.saturation_check) == (
        "cosine", 0.1 * ACCEPTED[name]["learning_rate"], True)
    r = cfg_lib.resolve(config, str(tmp_path), num_devices=1, process_count=1, read_files=False)
    model = GPT(r.model_config, rngs=nnx.Rngs(0))  # the shrunk model builds
    assert model.blocks.arrays()["gate_kernel"].shape[0] == 4 and not hasattr(model, "wpe")
    if "freeze_layers" in ACCEPTED[name]:
        assert r.notes[0].startswith("frozen: blocks 0-2 of 4, embeddings trained; ")
    else:
        batch, k = ACCEPTED[name]["batch_size"], ACCEPTED[name]["grad_accum_steps"]
        assert (f"batch_size x grad_accum_steps -> batch_size {batch} in {k} microbatches "
                "(upstream: per microbatch)") in translation.summary
    assert "ignored here as by the upstream: pad_token_id, epoch_drop_last" in translation.summary
    assert "upstream_semantics dc62a0c (the file carries " in translation.summary
    assert "\n" not in translation.summary


def test_the_recipe_decides_the_semantics_and_a_field_overrides_it(tmp_path):
    path = tmp_path / "c.json"
    cases = (({"learning_rate": 1e-4, "eval_sets": {"a": "d"}, "eval_seed": 1}, "24cc3fc"),
             ({"learning_rate": 1e-4, "freeze_layers": 1}, "dc62a0c"),
             ({"learning_rate": 1e-4, "freeze_layers": 1, "upstream_semantics": "24cc3fc"},
              "24cc3fc"))
    for content, semantics in cases:
        path.write_text(json.dumps(content))
        config, translation, _ = _translate(["--config_file", str(path)])
        assert (config.upstream_semantics, config.lr_schedule) == (
            semantics, "cosine" if semantics == "dc62a0c" else "constant"), content
        assert f"upstream_semantics {semantics} (" in translation.summary
    # --config.upstream_semantics wins over the file, and the file's defaults go with it.
    path.write_text(json.dumps({"learning_rate": 1e-4, "freeze_layers": 1}))
    keep = {"upstream_semantics"}
    preset = base.get_config()
    config, _, _ = _translate(["--config_file", str(path)], keep, preset)
    assert (config.upstream_semantics, config.lr_schedule, config.min_lr) == ("24cc3fc", "constant", 0.0)
    assert _translate(["--max_iters", "5"])[0].upstream_semantics == "24cc3fc"  # flags alone


def test_saturation_and_gold_objects_map_to_flat_fields(tmp_path):
    config, translation, _ = _translate(["--config_file", str(FIXTURES / "phase3_1_restart.json")])
    assert {k: config[k] for k in ("saturation_check", "saturation_window", "saturation_min_steps",
                                   "saturation_min_delta", "saturation_gap_threshold")} == {
        "saturation_check": True, "saturation_window": 4, "saturation_min_steps": 200,
        "saturation_min_delta": 0.002, "saturation_gap_threshold": 0.01}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rate": 1e-4, "gold_selection": GOLD,
                                "token_accuracy_saturation": {"enabled": False}}))
    config = _translate(["--config_file", str(path)])[0]
    assert not config.saturation_check  # the file's enabled beats the mask default
    assert {k: config[k] for k in config if k.startswith("gold_")} == {
        "gold_selection": "external_gate", "gold_loss_guards": True, "gold_overfit_ratio": 6.0,
        "gold_consecutive_rises": 3, "gold_eval_regression": 0.25,
        "gold_gate_script": "scripts/eval/eval_phase2_8_bridge.py",
        "gold_gate_args": ("--model", "{model_name}", "--output", "{output_json}",
                           "--no_system_prompt"),
        "gold_gate_python": "", "gold_gate_cwd": "", "gold_gate_timeout_s": 1200,
        "gold_gate_interval_evals": 1, "gold_gate_on_final": False,
        "gold_gate_metric_path": "hard_avg_rate", "gold_gate_metric_goal": "max",
        "gold_gate_pass_path": "gate_passed", "gold_gate_require_pass": False,
        "gold_gate_strict": False}
    off = {**GOLD, "external_gate": {**GOLD["external_gate"], "enabled": False}}
    path.write_text(json.dumps({"gold_selection": off}))
    assert _translate(["--config_file", str(path)])[0].gold_gate_script == ""  # no gate
    for content, message in (
            ({"token_accuracy_saturation": {"action": "stop"}},
             "token_accuracy_saturation: action 'stop': only 'log_and_flag' exists"),
            ({"token_accuracy_saturation": {"windows": 3}},
             "token_accuracy_saturation: unknown key 'windows'"),
            ({"gold_selection": {"guards": {"overfit": 2}}},
             "gold_selection.guards: unknown key 'overfit'")):
        path.write_text(json.dumps(content))
        with pytest.raises(upstream_cli.UpstreamConfigError) as info:
            _translate(["--config_file", str(path)])
        assert str(info.value).startswith(f"--config_file {path}: {message}"), str(info.value)


def test_save_every_is_ignored_as_upstream(tmp_path):
    _, translation, _ = _translate(["--config_file", str(FIXTURES / "phase3_chat_sft.json")])
    assert re.search(r"ignored here as by the upstream: [^;]*save_every", translation.summary)
    assert translation.overrides["checkpoint_interval"] == 0


def test_grad_accum_steps_scales_the_upstream_batch(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 4, "grad_accum_steps": 3}))
    assert _translate(["--config_file", str(path)])[0].batch_size == 12
    config = _translate(["--config_file", str(path), "--batch_size", "2"])[0]
    assert (config.batch_size, config.grad_accum_steps) == (6, 3)  # --batch_size: per microbatch
    for content, message in (
            ({"grad_accum_steps": 2}, r"grad_accum_steps 2: the upstream's batch_size is per "
                                      r"microbatch; give batch_size in the file or --batch_size"),
            ({"batch_size": 4, "grad_accum_steps": 0}, r"grad_accum_steps: expected an integer "
                                                       r">= 1, got 0")):
        path.write_text(json.dumps(content))
        with pytest.raises(upstream_cli.UpstreamConfigError, match=f"^--config_file {path}: {message}"):
            _translate(["--config_file", str(path)])
