"""Eval-prompt files, scoring, and batched greedy evaluation on a model with known outputs."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mypt_jax import evaluate
from mypt_jax.data.chat import SYSTEM_PROMPT, chat_prompt
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.decoding import decode
from mypt_jax.model import GPT, ModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sft_eval"

# (question, expected output) per shipped file; upstream six and the seed doc's Step 4 prompts.
SHIPPED = {
    "phase3a1_eval_prompts.json": {
        "say_ok": ("Say OK.", "OK."), "say_hello": ("Say Hello.", "Hello."),
        "math_5_7": ("What is 5 + 7?", "12."), "capital_de": ("Capital of Germany?", "Berlin."),
        "echo_banana": ("Say Banana.", "Banana."), "copy_nonsense": ("Say Galigali.", "Galigali."),
    },
    "phase3a1_alpha_test_prompts.json": {
        "say_hello_lower": ("Say hello.", "hello."), "say_hello": ("Say Hello.", "Hello."),
        "sag_hallo": ("Sag Hallo.", "Hallo."),
    },
    "phase3a1_beta_test_prompts.json": {
        "repeat_hello_world": ("Repeat: Hello world", "Hello world"),
        "echo_testing_123": ("Echo: Testing 123", "Testing 123"),
    },
    "phase3a1_gamma_test_prompts.json": {
        "say_blurpix": ("Say: Blurpix", "Blurpix"),
        "repeat_zanthor": ("Repeat: Zanthor quexling", "Zanthor quexling"),
    },
    "phase3a2_test_prompts.json": {
        "math_5_7": ("What is 5 + 7?", "12."), "capital_fr": ("Capital of France?", "Paris."),
        "capital_de": ("Capital of Germany?", "Berlin."), "math_9_3": ("What is 9 × 3?", "27."),
    },
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_eval_prompt_files(name):
    ep = evaluate.load_eval_prompts(CONFIGS / name)
    full = ("<myPT_system>You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly."
            "</myPT_system><myPT_user>{}</myPT_user><myPT_assistant>")
    assert ep.prompts == {k: full.format(q) for k, (q, _) in SHIPPED[name].items()}
    assert ep.prompts == {k: chat_prompt(q) for k, (q, _) in SHIPPED[name].items()}
    assert ep.expected == {k: a for k, (_, a) in SHIPPED[name].items()}
    assert ep.system_prompt == SYSTEM_PROMPT
    assert ep.description


def test_every_shipped_file_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.json")) == sorted(SHIPPED)


def _write(tmp_path: Path, content) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize(("content", "message"), [
    ('{"prompts": {"a": "x"},\n "expected_outputs": ', r"not valid JSON \(line 2"),
    ([1, 2], "expected a JSON object"),
    ({"expected_outputs": {}}, "'prompts' must be a non-empty object"),
    ({"prompts": {"a": 3}}, r"prompts\['a'\] must be a string"),
    ({"prompts": {"a": "x"}, "expected_outputs": {"b": "y"}}, r"names \['b'\] that are not in"),
])
def test_bad_eval_prompt_files_name_the_file_and_key(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(evaluate.EvalPromptsError, match=message) as info:
        evaluate.load_eval_prompts(path)
    assert str(path) in str(info.value)


def test_missing_eval_prompt_file(tmp_path):
    with pytest.raises(evaluate.EvalPromptsError, match="nope.json: eval prompts file not found"):
        evaluate.load_eval_prompts(tmp_path / "nope.json")


@pytest.mark.parametrize(("completion", "expected", "exact", "normalized"), [
    ("Hello.</myPT_assistant>", "Hello.", True, True),
    ("Hello.<myPT_eot>", "Hello.", True, True),
    ("Hello.", "Hello.", True, True),
    ("hello</myPT_assistant>", "Hello.", False, True),
    (" HELLO! ", "Hello.", False, True),
    ("Hello world.", "Hello", False, False),
    ("12.</myPT_assistant>", "13.", False, False),
    ("Hello.</myPT_assistant>x", "Hello.", False, False),
])
def test_score(completion, expected, exact, normalized):
    assert evaluate.score(completion, expected) == {"exact": exact, "normalized": normalized}


# ----- a model whose greedy output is fixed by position -----

def position_oracle(table: dict[int, int], block_size: int = 64) -> GPT:
    """Greedy output after position p is table[p], whatever the tokens: all blocks are zero,
    the hidden state is the one-hot position embedding, and lm_head maps it to the token."""
    cfg = ModelConfig(block_size=block_size, vocab_size=50304, n_embd=block_size, n_head=4,
                      n_layer=1, dropout=0.0, tie_weights=False)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    pure = params.to_pure_dict()
    pure = {k: np.zeros_like(v) for k, v in pure.items() if k != "blocks"} | {
        "blocks": {k: np.zeros_like(v) for k, v in pure["blocks"].items()}}
    pure["wpe"] = np.eye(block_size, dtype=np.float32)
    pure["ln_f_scale"] = np.ones(block_size, np.float32)
    for position, token in table.items():
        pure["lm_head_kernel"][token, position] = 10.0
    params.replace_by_pure_dict(jax_tree(pure))
    nnx.update(model, params)
    return model


def jax_tree(tree):
    return {k: jax_tree(v) if isinstance(v, dict) else jnp.asarray(v) for k, v in tree.items()}


def test_evaluate_generates_all_prompts_in_one_batch_and_scores_them(monkeypatch):
    tok = Tokenizer()
    close = tok.assistant_close_id
    questions = {"ok": "Say OK.", "math": "What is 5 + 7?", "hello": "Say Hello to everyone who is here in the room.",
                 "free": "Tell me anything you like about the weather today, at length please."}
    answers = {"ok": "OK.", "math": "13.", "hello": "hello."}  # what the oracle will say
    table: dict[int, int] = {}
    for name, text in answers.items():
        start = len(tok.encode(chat_prompt(questions[name]))) - 1
        for i, token in enumerate([*tok.encode_ordinary(text), close]):
            assert start + i not in table, "the test prompts' answer positions must not overlap"
            table[start + i] = token
    assert len(tok.encode(chat_prompt(questions["free"]))) - 1 > max(table)
    model = position_oracle(table)
    eval_prompts = evaluate.EvalPrompts(
        prompts={n: chat_prompt(q) for n, q in questions.items()},
        expected={"ok": "OK.", "math": "12.", "hello": "Hello."},
    )
    calls = []
    real = decode.generate_tokens
    monkeypatch.setattr(decode, "generate_tokens",
                        lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
    results = evaluate.evaluate(model, tok, eval_prompts, max_new_tokens=6)
    assert calls == [4]
    by_name = {r["name"]: r for r in results}
    assert [r["name"] for r in results] == list(questions)
    assert by_name["ok"] | {"prompt": None} == {
        "name": "ok", "prompt": None, "completion": "OK.", "expected": "OK.", "exact": True,
        "normalized": True, "stopped_by": "stop_token"}
    assert (by_name["math"]["completion"], by_name["math"]["exact"],
            by_name["math"]["normalized"]) == ("13.", False, False)
    assert (by_name["hello"]["completion"], by_name["hello"]["exact"],
            by_name["hello"]["normalized"]) == ("hello.", False, True)
    assert by_name["free"]["expected"] is None and by_name["free"]["exact"] is None
    assert by_name["free"]["stopped_by"] == "length"
    assert evaluate.summarize(results) == {"scored": 3, "exact": 1, "normalized": 2}
    table_text = evaluate.format_table(results)
    assert "exact 1/3, normalized 2/3" in table_text and "'13.'" in table_text


def test_write_json_atomic_keeps_non_ascii_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "sub" / "r.json"
    evaluate.write_json_atomic(out, {"completion": "Grüße"})
    assert json.loads(out.read_text(encoding="utf-8")) == {"completion": "Grüße"}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_cli_errors_name_the_prompts_file(tmp_path, capsys):
    assert evaluate.main(["--model", str(tmp_path), "--eval_prompts_file",
                          str(tmp_path / "missing.json")]) == 2
    assert "missing.json: eval prompts file not found" in capsys.readouterr().err


def test_cli_default_max_new_tokens_fits_a_short_block(tmp_path, capsys):
    """The Step 4 evaluate command (docs/pipeline.md) on a block-64 model (the quickstart's) answers."""
    from mypt_jax.interop import model_io

    tok = Tokenizer()
    prompts_file = CONFIGS / "phase3a1_alpha_test_prompts.json"
    prompt_len = len(tok.encode(chat_prompt("Say hello.")))
    answer = [*tok.encode_ordinary("hello."), tok.assistant_close_id]
    model = position_oracle({prompt_len - 1 + i: t for i, t in enumerate(answer)})
    model_io.save_model(tmp_path / "m", model, model.config, tok)
    out = tmp_path / "r.json"
    argv = ["--model", str(tmp_path / "m"), "--eval_prompts_file", str(prompts_file), "--out", str(out)]
    assert evaluate.main(argv) == 0
    captured = capsys.readouterr()
    longest = max(len(tok.encode(p)) for p in evaluate.load_eval_prompts(prompts_file).prompts.values())
    assert (f"max_new_tokens not given: using {64 - longest}, what block_size 64 leaves after the "
            f"longest prompt ({longest} ids), instead of the default 64") in captured.err
    assert "'hello.'" in captured.out
    assert json.loads(out.read_text())["max_new_tokens"] == 64 - longest
    assert evaluate.main([*argv, "--max_new_tokens", "64"]) == 2  # given, it must fit
    assert "max_new_tokens 64 leaves no room for the prompt" in capsys.readouterr().err
