"""The upstream's SFT recipes as test fixtures: all of them, each the upstream's file but for the
model's size (tests/fixtures/upstream_configs/README.md). Every one of dc62a0c's 19 recipes
trains through the upstream command line on stand-in data, with the newer upstream's loop;
the four with an external gate train against a stand-in of its gate script, and are refused
before step 0 without one."""

import hashlib
import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
import train_helpers

from configs import base
from mypt_jax.interop import upstream_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "upstream_configs"
# chberclaz/MyPT at dc62a0c: configs/sft/*.json, plus one file of configs/sft/_archive/sft1/.
UPSTREAM_SFT = (
    "phase1_format_lock.json", "phase1_format_lock_nopack_shortctx.json",
    "phase2_5_wrap_antiecho.json", "phase2_6_antiecho.json", "phase2_7_rebalance.json",
    "phase2_8_echo_rebalance.json", "phase2_8b_echo_rebalance.json",
    "phase2_8c_exactness_bridge.json", "phase2_operators.json", "phase2_remix_existing.json",
    "phase2_unified_rebuild.json", "phase3_1_corrective.json", "phase3_1_restart.json",
    "phase3_2_corrective.json", "phase3_chat_sft.json", "phase3_chat_sft_110k.json",
    "phase4_multiturn.json", "phase5_simple_toolcall.json", "phase6_agentic_rag.json",
)
ARCHIVE = "750M_phase3a_operator_packed.json"
# What the shrinking changed: the fixture's value, and the upstream's.
SHRUNK = {"block_size": 64, "n_embd": 32, "n_head": 2, "n_layer": 4, "freeze_layers": 3}
UPSTREAM_SIZE = {"n_embd": 1280, "n_head": 20, "n_layer": 32, "freeze_layers": 28}
UPSTREAM_BLOCK = {"phase1_format_lock_nopack_shortctx.json": 512, ARCHIVE: 1024}  # else 4096
# sha256 (first 16 hex digits) of each upstream file less name and description, as
# json.dumps(sort_keys=True) writes it: taken once from the upstream repository, so that a
# fixture grown back to the upstream's sizes must hash the same.
UPSTREAM_DIGEST = {
    "phase1_format_lock.json": "06c9a7c7824ad9f5",
    "phase1_format_lock_nopack_shortctx.json": "7b287f24ce853173",
    "phase2_5_wrap_antiecho.json": "ac53789b72e68fda",
    "phase2_6_antiecho.json": "d99a6ec7182d6815",
    "phase2_7_rebalance.json": "9754ddca05f0e424",
    "phase2_8_echo_rebalance.json": "995560149d56415b",
    "phase2_8b_echo_rebalance.json": "8d2ee74050a5c94e",
    "phase2_8c_exactness_bridge.json": "9d36db37cf69fcb7",
    "phase2_operators.json": "c3ecaacb571f427e",
    "phase2_remix_existing.json": "7fe3dd3c0a37df29",
    "phase2_unified_rebuild.json": "71ef69b18937c6df",
    "phase3_1_corrective.json": "9e89718fee6f2fa1",
    "phase3_1_restart.json": "232f18d3ba9ad6ab",
    "phase3_2_corrective.json": "22435813e68ca806",
    "phase3_chat_sft.json": "f25806f276740bdf",
    "phase3_chat_sft_110k.json": "7e18a2b95d6bf206",
    "phase4_multiturn.json": "9ae2bb63044c5fb3",
    "phase5_simple_toolcall.json": "b49ef09f5c7e5546",
    "phase6_agentic_rag.json": "d8e34a4a4621af4f",
    ARCHIVE: "b642ac907b37faf3",
}


def _digest(fields: dict) -> str:
    rest = {k: v for k, v in fields.items() if k not in ("name", "description")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def test_every_upstream_sft_config_is_a_fixture_shrunk_and_otherwise_unchanged():
    assert {p.name for p in FIXTURES.glob("*.json")} == {*UPSTREAM_SFT, ARCHIVE}
    for name in (*UPSTREAM_SFT, ARCHIVE):
        fixture = json.loads((FIXTURES / name).read_text())
        where = "configs/sft/" + ("_archive/sft1/" if name == ARCHIVE else "") + name
        assert fixture["name"] == name.removesuffix(".json"), name
        assert fixture["description"] == (
            f"test fixture: the upstream's {where} with the model shrunk"), name
        shrunk = {k: fixture[k] for k in SHRUNK if k in fixture}
        assert shrunk == {k: v for k, v in SHRUNK.items() if k in shrunk}, name
        grown = {**fixture, **{k: UPSTREAM_SIZE[k] for k in shrunk if k in UPSTREAM_SIZE},
                 "block_size": UPSTREAM_BLOCK.get(name, 4096)}
        assert _digest(grown) == UPSTREAM_DIGEST[name], name


def test_the_full_size_fixture_is_the_upstream_file():
    full = json.loads((FIXTURES / "full" / "phase3_chat_sft.json").read_text())
    assert full["name"] == "Phase 3: Chat SFT"
    assert _digest(full) == UPSTREAM_DIGEST["phase3_chat_sft.json"]
    shrunk = json.loads((FIXTURES / "phase3_chat_sft.json").read_text())
    assert {k: v for k, v in full.items() if shrunk[k] != v} == {
        "name": "Phase 3: Chat SFT", "description": full["description"],
        "block_size": 4096, "n_embd": 1280, "n_head": 20, "n_layer": 32}


# dc62a0c's configs/sft/*.json by name, which the fixtures are pinned to above.
DC62A0C_SFT = tuple(name.removesuffix(".json") for name in UPSTREAM_SFT)
# A stand-in for the upstream's scripts/eval/eval_phase2_8_bridge.py: it loads the model the
# way the upstream's loaders find one (checkpoints/ joined with --model) and writes a verdict.
GATE = textwrap.dedent("""\
    import argparse, json, os, sys
    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--output"); p.add_argument("--no_system_prompt",
                                                                          action="store_true")
    a = p.parse_args()
    d = os.path.join("checkpoints", a.model)
    ok = all(os.path.isfile(os.path.join(d, f)) for f in ("model.pt", "config.json"))
    json.dump({"gate_passed": ok, "hard_avg_rate": 50.0 if ok else 0.0}, open(a.output, "w"))
    sys.exit(0 if ok else 1)
""")


def _config(name: str):
    args, _ = upstream_cli.split_argv([
        "--model_name", name, "--dataset_dir", "data/sft", "--config_file",
        str(FIXTURES / f"{name}.json"), "--max_iters", "1", "--eval_interval", "1",
        "--eval_iters", "1", "--warmup_iters", "1", "--batch_size", "8", "--use_amp", "false"])
    translation = upstream_cli.translate(args)
    return upstream_cli.apply(base.get_config(), translation, set()), translation


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """Stand-in data at every path the recipes name, and a stand-in upstream checkout."""
    from mypt_jax.data.prepare import prepare

    monkeypatch.chdir(tmp_path)
    chat = train_helpers.write_chat_jsonl(tmp_path / "chat.jsonl", 60)
    prepare(chat, tmp_path / "data" / "sft", val_split=0.25, progress=False)
    for name in DC62A0C_SFT:
        for path in (json.loads((FIXTURES / f"{name}.json").read_text()).get("eval_sets") or {}
                     ).values():
            if not (tmp_path / path).exists():
                shutil.copytree(tmp_path / "data" / "sft", tmp_path / path)
    gate = tmp_path / "upstream" / "scripts" / "eval" / "eval_phase2_8_bridge.py"
    gate.parent.mkdir(parents=True)
    gate.write_text(GATE)
    return tmp_path


@pytest.mark.slow
def test_every_dc62a0c_recipe_trains_with_its_loop(stand_in):
    """Each recipe, and the archived one, through the upstream command line (in-process)."""
    from mypt_jax.training import trainer
    from mypt_jax.training.setup.config import ConfigError

    for name in (*DC62A0C_SFT, ARCHIVE.removesuffix(".json")):
        recipe = json.loads((FIXTURES / f"{name}.json").read_text())
        config, translation = _config(name)
        assert config.upstream_semantics == "dc62a0c", name
        assert translation.summary.count("upstream_semantics dc62a0c") == 1, name
        if config.gold_gate_script:  # refused before anything runs without its script
            with pytest.raises(ConfigError, match="^gold_gate_script: .* does not exist"):
                trainer.train(config)
            config.gold_gate_cwd = str(stand_in / "upstream")
        summary = trainer.train(config)
        assert math.isfinite(summary["final_val_loss"]), name
        log = train_helpers.read_log(stand_in / config.log_file)
        evals = [r for r in log if "val_loss" in r and "event" not in r]
        assert len(evals) == 2, name  # step 0 and the final 1
        assert all(r["train_masked_token_count"] > 0 and r["val_masked_token_count"] > 0
                   for r in evals), name
        # What the run saved is the recipe: its microbatches, remat, model, eval sets, freezing.
        c = json.loads((stand_in / config.workdir / "checkpoints" / "1" / "meta" / "metadata"
                        ).read_text())["config"]
        assert (c["batch_size"], c["remat"]) == (
            8 * recipe.get("grad_accum_steps", 1),
            "full" if recipe.get("use_checkpoint") else "none"), name
        assert (c["pos_encoding"], c["mlp_type"], c["norm_type"]) == ("rope", "swiglu", "rmsnorm")
        assert c["eval_sets"] == ",".join(f"{k}={v}" for k, v in
                                          (recipe.get("eval_sets") or {}).items()), name
        notes = next(r for r in log if r.get("event") == "start")["notes"]
        frozen = any(n.startswith("frozen: blocks 0-2 of 4, embeddings trained;") for n in notes)
        assert frozen == ("freeze_layers" in recipe), name
        if config.gold_selection:  # the gate passed: the first eval is GOLD
            gold = [r for r in log if r.get("event", "").startswith("gold_")]
            assert gold[0]["event"] == "gold_checkpoint", (name, gold[0])
            assert len(gold) == 2 and (stand_in / "checkpoints" / f"{name}_gold").is_dir(), name
            assert all(r["gate"]["ok"] and r["gate"]["metric_value"] == 50.0 for r in gold
                       if config.gold_gate_script and r["iter"] < 1), name


@pytest.mark.slow
def test_a_saturation_and_val_loss_gold_recipe_trains(stand_in):
    """phase3_1_restart.json (token_accuracy_saturation) with dc62a0c's default GOLD strategy:
    accuracy and the saturation fields at every eval, and checkpoints/<name>_gold written."""
    from mypt_jax.training import trainer

    recipe = json.loads((FIXTURES / "phase3_1_restart.json").read_text())
    recipe["gold_selection"] = {"strategy": "val_loss"}
    recipe["token_accuracy_saturation"].update(min_steps_before_check=1, window=2)
    path = stand_in / "phase3_1_gold.json"
    path.write_text(json.dumps(recipe))
    args, _ = upstream_cli.split_argv([
        "--model_name", "restart", "--dataset_dir", "data/sft", "--config_file",
        str(path), "--max_iters", "2", "--eval_interval", "1", "--eval_iters", "1", "--warmup_iters", "1",
        "--batch_size", "8", "--use_amp", "false"])
    config = upstream_cli.apply(base.get_config(), upstream_cli.translate(args), set())
    summary = trainer.train(config)
    log = train_helpers.read_log(stand_in / config.log_file)
    evals = [r for r in log if "val_loss" in r and "event" not in r]
    assert [r["iter"] for r in evals] == [0, 1, 2]
    assert summary["val_masked_token_acc"] == evals[-1]["val_masked_token_acc"]
    assert all(0.0 <= r["train_masked_token_acc"] <= 1.0 and 0.0 <= r["val_masked_token_acc"]
               <= 1.0 and "saturation_detected" in r for r in evals)
    assert evals[0]["saturation_reason"] is None  # one eval is no window
    gold = [r for r in log if r.get("event", "").startswith("gold_")]
    assert [r["iter"] for r in gold] == [0, 1, 2] and gold[0]["event"] == "gold_checkpoint"
    chosen = max((r for r in gold if r["selected"]), key=lambda r: r["iter"])
    assert chosen["val_loss"] == min(r["val_loss"] for r in gold)
    source = json.loads((stand_in / "checkpoints" / "restart_gold" / "source.json").read_text())
    assert source["step"] == chosen["iter"]
    assert (stand_in / "checkpoints" / "restart_gold" / "upstream" / "model.pt").is_file()
    state = json.loads((stand_in / "checkpoints" / "restart" / "gold_selection_state.json"
                        ).read_text())
    assert state["gold_step"] == summary["gold"]["step"] == chosen["iter"]
