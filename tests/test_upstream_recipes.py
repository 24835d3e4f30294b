"""Every one of dc62a0c's 19 `configs/sft/*.json` recipes (shrunk, tests/fixtures/upstream_configs)
trains through the upstream command line on stand-in data, with the newer upstream's loop;
the four with an external gate train against a stand-in of its gate script, and are refused
before step 0 without one."""

from __future__ import annotations

import json
import math
import shutil
import textwrap

import pytest
import train_helpers

from configs import base
from mypt_jax.interop import upstream_cli

FIXTURES = train_helpers.REPO / "tests" / "fixtures" / "upstream_configs"
# dc62a0c's configs/sft/*.json, by name (the fixture directory also holds an archived one).
DC62A0C_SFT = (
    "phase1_format_lock", "phase1_format_lock_nopack_shortctx", "phase2_5_wrap_antiecho",
    "phase2_6_antiecho", "phase2_7_rebalance", "phase2_8_echo_rebalance",
    "phase2_8b_echo_rebalance", "phase2_8c_exactness_bridge", "phase2_operators",
    "phase2_remix_existing", "phase2_unified_rebuild", "phase3_1_corrective", "phase3_1_restart",
    "phase3_2_corrective", "phase3_chat_sft", "phase3_chat_sft_110k", "phase4_multiturn",
    "phase5_simple_toolcall", "phase6_agentic_rag",
)
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


def _config(name: str, keep=frozenset()):
    args, _ = upstream_cli.split_argv([
        "--model_name", name, "--dataset_dir", "data/sft", "--config_file",
        str(FIXTURES / f"{name}.json"), "--max_iters", "1", "--eval_interval", "1",
        "--eval_iters", "1", "--warmup_iters", "1", "--batch_size", "8", "--use_amp", "false"])
    translation = upstream_cli.translate(args)
    return upstream_cli.apply(base.get_config(), translation, set(keep)), translation


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


def test_the_fixtures_hold_all_19_recipes():
    assert sorted(p.stem for p in FIXTURES.glob("phase*.json")) == sorted(DC62A0C_SFT)


@pytest.mark.slow
def test_every_dc62a0c_recipe_trains_with_its_loop(stand_in):
    from mypt_jax.training import trainer
    from mypt_jax.training.setup.config import ConfigError

    for name in DC62A0C_SFT:
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
