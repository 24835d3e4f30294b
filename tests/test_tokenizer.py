import json

import pytest

from mypt_jax.data import tokenizer as tok
from mypt_jax.data.chat import SYSTEM_PROMPT, chat_prompt, serialize_conversation
from mypt_jax.data.tokenizer import Tokenizer, TokenizerError, head_tokenizer

# From the upstream, measured (UPSTREAM_MODEL.md 2.4): the seed doc's prompt for "Say Hello.".
SAY_HELLO_IDS = [
    50257, 1639, 389, 2011, 11571, 13, 1355, 35327, 25, 352, 12, 17, 13439, 13,
    7281, 7729, 3446, 13, 50258, 50259, 25515, 18435, 13, 50260, 50263,
]  # fmt: skip

SEED_IDS = {
    "<myPT_system>": 50257, "</myPT_system>": 50258, "<myPT_user>": 50259,
    "</myPT_user>": 50260, "<myPT_user_context>": 50261, "</myPT_user_context>": 50262,
    "<myPT_assistant>": 50263, "</myPT_assistant>": 50264, "<myPT_assistant_context>": 50265,
    "</myPT_assistant_context>": 50266, "<myPT_toolcall>": 50267, "</myPT_toolcall>": 50268,
    "<myPT_toolresult>": 50269, "</myPT_toolresult>": 50270, "<myPT_eot>": 50271,
}  # fmt: skip


def test_seed_prompt_ids_exact():
    ids = Tokenizer().encode(chat_prompt("Say Hello."))
    assert ids == SAY_HELLO_IDS
    assert ids[:3] == [50257, 1639, 389] and ids[-2:] == [50260, 50263]


def test_special_ids_follow_upstream_order():
    t = Tokenizer()
    assert t.id_by_string == SEED_IDS
    assert (t.eot_id, t.assistant_open_id, t.assistant_close_id) == (50271, 50263, 50264)
    assert t.model_vocab_size == 50304


def test_segments_encoded_independently():
    t = Tokenizer()
    # " world" after a tag would be one token with the leading space; each segment stands alone.
    assert t.encode("<myPT_user>Hello</myPT_user>world") == [50259, 15496, 50260, 6894]
    assert t.encode("Hello world") == [15496, 995]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain text",
        "Sag Grüße, schöne Welt! äöüß ÄÖÜ × ÷ °C",
        serialize_conversation(
            [{"role": "user", "content": "Repeat: <myPT_eot> inside"},
             {"role": "assistant", "content": "ok\nnew line"}]
        ),
        "<myPT_toolcall>{\"name\": \"x\"}</myPT_toolcall><myPT_eot><myPT_eot>",
    ],
)
def test_round_trip(text):
    t = Tokenizer()
    assert t.decode(t.encode(text)) == text


def test_tag_inside_content_becomes_control_token():
    ids = Tokenizer().encode("a<myPT_eot>b")
    assert 50271 in ids


def test_state_schema_and_round_trip(tmp_path):
    t = Tokenizer()
    state = t.get_state()
    assert state == {
        "token_kind": "gpt2",
        "chars": None,
        "base_vocab_size": 50257,
        "model_vocab_size": 50304,
        "special_token_encoder": SEED_IDS,
        "special_tokens_by_name": {n: SEED_IDS[s] for n, s in tok.SEED_SPECIAL_TOKENS.items()},
        "special_token_version": 1,
    }
    t.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path / "tokenizer.json") == t


def test_head_map_read_from_state():
    # The newer upstream map as its tokenizer.json stores it (ids pinned, 19 tags).
    names = list(tok.HEAD_SPECIAL_TOKEN_IDS)
    strings = {**tok.SEED_SPECIAL_TOKENS, "myPT_think_open": "<myPT_think>",
               "myPT_think_close": "</myPT_think>", "myPT_cite_open": "<myPT_cite>",
               "myPT_cite_close": "</myPT_cite>"}  # fmt: skip
    state = {
        "token_kind": "gpt2", "chars": None, "base_vocab_size": 50257, "model_vocab_size": 50304,
        "special_token_encoder": {strings[n]: tok.HEAD_SPECIAL_TOKEN_IDS[n] for n in names},
        "special_tokens_by_name": dict(tok.HEAD_SPECIAL_TOKEN_IDS),
        "special_token_version": 1,
    }  # fmt: skip
    t = Tokenizer.from_state(state)
    assert (t.assistant_open_id, t.assistant_close_id, t.eot_id) == (50261, 50262, 50275)
    assert t.encode("<myPT_assistant><myPT_think>") == [50261, 50271]
    assert t == head_tokenizer()
    # Same text, different ids under the seed map: the stored map must win.
    assert Tokenizer().encode("<myPT_assistant>") == [50263]


def test_stored_map_wins_even_if_unusual():
    state = Tokenizer().get_state()
    state["special_token_encoder"]["<myPT_eot>"] = 50299
    state["special_tokens_by_name"]["myPT_eot"] = 50299
    assert Tokenizer.from_state(state).eot_id == 50299


def test_prepinning_state_regenerates_seed_ids():
    state = {"token_kind": "gpt2", "chars": None, "base_vocab_size": 50257, "model_vocab_size": 50304}
    assert Tokenizer.from_state(state) == Tokenizer()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.update(token_kind="char"), "token_kind"),
        (lambda s: s["special_token_encoder"].update({"<myPT_eot>": 60000}), "60000"),
        (lambda s: s["special_token_encoder"].update({"<myPT_eot>": 50257}), "twice"),
        (lambda s: s["special_token_encoder"].update({"<odd>": 50280}), "<odd>"),
        (lambda s: s.update(base_vocab_size=100), "base_vocab_size"),
    ],
)
def test_bad_states_refused(mutate, message):
    state = json.loads(json.dumps(Tokenizer().get_state()))
    mutate(state)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_state(state, source="x/tokenizer.json")


def test_bad_file_names_path(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.load(bad)
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")


def test_bpe_hash_is_checked(tmp_path, monkeypatch):
    for name in ("vocab.bpe", "encoder.json"):
        (tmp_path / name).write_bytes((tok._gpt2_data_dir() / name).read_bytes())
    (tmp_path / "vocab.bpe").write_bytes(b"#version: 0.2\nh e\n")
    monkeypatch.setattr(tok, "_gpt2_data_dir", lambda: tmp_path)
    tok.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="sha256"):
            tok.gpt2_encoding()
    finally:
        tok.gpt2_encoding.cache_clear()


def test_unused_padding_ids_decode_to_nothing():
    assert Tokenizer().decode([15496, 50290, 50271]) == "Hello<myPT_eot>"


def test_system_prompt_is_upstream_text():
    assert SYSTEM_PROMPT == "You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly."
    assert len(SYSTEM_PROMPT) == 69
