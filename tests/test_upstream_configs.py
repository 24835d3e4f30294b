"""The upstream's SFT recipes as test fixtures: all of them, each the upstream's file but for the
model's size (tests/fixtures/upstream_configs/README.md)."""

import hashlib
import json
from pathlib import Path

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
