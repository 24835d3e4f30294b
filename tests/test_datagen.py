"""Generators: sizes per mode, required prompts, record format, determinism, gibberish splits."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from datagen import content_echo, content_format_lock, echo, format_lock, gibberish
from datagen.records import DatagenError, make_record, to_jsonl, write_jsonl

SYSTEM = "You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly."


def pairs(records):
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in records]


def within(n, reference, tolerance=0.15):
    return abs(n - reference) <= tolerance * reference


# --- format lock --------------------------------------------------------------------------------

# Upstream sizes, spec UPSTREAM_DATAGEN.md table 2.6.
@pytest.mark.parametrize(
    "mode,math,upstream",
    [
        ("minimal", "exclude", 391),
        ("minimal", "minimal", 1695),
        ("minimal", "include", 10667),
        ("minimal", "only", 10276),
        ("full", "exclude", 2153),
        ("full", "minimal", 3457),
        ("full", "include", 12429),
        ("full", "only", 10276),
    ],
)
def test_format_lock_sizes_match_upstream(mode, math, upstream):
    n = len(format_lock.generate(mode, math))
    assert within(n, upstream), (mode, math, n, upstream)


def test_alpha_holds_the_seed_doc_eval_pairs():
    alpha = set(pairs(format_lock.generate("minimal", "exclude")))
    for pair in [("Say hello.", "hello."), ("Say Hello.", "Hello."), ("Sag Hallo.", "Hallo."), ("Say OK.", "OK.")]:
        assert pair in alpha
    answers = [a for _, a in alpha]
    assert all(a.endswith((".", "!")) for a in answers)


def test_3a2_holds_math_capitals_and_bare_code_answers():
    records = format_lock.generate("full", "include")
    got = pairs(records)
    for pair in [
        ("Capital of Germany?", "Berlin."),
        ("What is 7 × 8?", "56."),
        ("What is 12 ÷ 4?", "3."),
        ("Subtract 5 from 20.", "15."),
        ("50 + 20?", "70."),
        ("0 / 7?", "0."),
        ("Backslash?", "\\"),
        ("Python file extension?", ".py"),
        ("Abbreviation for degrees Celsius?", "°C"),
        ("365 in words?", "Three hundred sixty-five."),
    ]:
        assert pair in got, pair
    assert len(got) == len(set(got)), "exact duplicate pairs must be removed"
    # The upstream keeps this conflict (same question, two answers); so do we.
    assert sorted(a for q, a in got if q == "How are you?") == ["Good.", "I'm fine, thanks!"]
    assert records[10000]["context"] == "episode_id: format_lock_10000"
    math_answers = [a for q, a in got if re.fullmatch(r"(What is )?\d+ [-+×÷*/] \d+\?", q)]
    assert len(math_answers) > 5000 and all(re.fullmatch(r"\d+\.", a) for a in math_answers)


def test_math_only_ignores_mode():
    assert to_jsonl(format_lock.generate("minimal", "only")) == to_jsonl(format_lock.generate("full", "only"))


def test_format_lock_language_labels():
    records = format_lock.generate("full", "exclude")
    german = {q for q, _ in content_format_lock.GERMAN_BASICS}
    for record in records:
        question = record["messages"][0]["content"]
        assert record["language"] == ("de" if question in german else "en"), question
    alpha = {r["messages"][0]["content"]: r["language"] for r in format_lock.generate("minimal", "exclude")}
    assert alpha["Wie geht's?"] == "de" and alpha["Alles klar?"] == "de" and alpha["Say hello."] == "en"
    assert Counter(alpha.values())["de"] == 14


def test_record_serialisation_matches_upstream_bytes():
    # Spec 2.7, alpha line 33 and 3a-2's backslash line, verbatim.
    line = to_jsonl([make_record("Sag Hallo.", "Hallo.", "episode_id: format_lock_0033", "de")])
    assert line == (
        '{"system": "You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly.", '
        '"context": "episode_id: format_lock_0033", "messages": [{"role": "user", "content": '
        '"Sag Hallo."}, {"role": "assistant", "content": "Hallo."}], "language": "de"}\n'
    )
    line = to_jsonl([make_record("Backslash?", "\\", "episode_id: format_lock_8984", "en")])
    assert line.endswith('{"role": "assistant", "content": "\\\\"}], "language": "en"}\n')
    line = to_jsonl([make_record("Sag: Größe", "Größe", "episode_id: echo_0001, category: echo_word_de", "de")])
    assert '"content": "Größe"' in line  # raw UTF-8, not \\u escapes


def test_generated_records_have_upstream_shape():
    for records, prefix in [
        (format_lock.generate("minimal", "exclude"), "episode_id: format_lock_"),
        (echo.generate("only"), "episode_id: echo_"),
    ]:
        for i, record in enumerate(records):
            assert list(record) == ["system", "context", "messages", "language"]
            assert record["system"] == SYSTEM
            assert record["context"].startswith(f"{prefix}{i:04d}")
            assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
            assert list(record["messages"][0]) == ["role", "content"]


def test_format_lock_same_seed_same_bytes_other_seed_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    format_lock.main(["--mode", "minimal", "--math", "exclude", "--output_dir", "a"])
    format_lock.main(["--mode", "minimal", "--math", "exclude", "--output_dir", "b"])
    format_lock.main(["--mode", "minimal", "--math", "exclude", "--output_dir", "c", "--seed", "7"])
    a, b, c = (tmp_path / d / "mypt_format_lock_v1.jsonl" for d in "abc")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert a.read_bytes().endswith(b"}\n") and a.read_bytes().count(b"\n") == 393
    assert "393" in capsys.readouterr().out


def test_format_lock_order_is_the_upstream_global_rng_shuffle():
    expected = format_lock.build_pairs("minimal", "exclude")
    state = random.getstate()
    try:
        random.seed(42)  # the upstream's hard-coded seeding, then one global shuffle
        random.shuffle(expected)
    finally:
        random.setstate(state)
    assert pairs(format_lock.generate("minimal", "exclude", seed=42)) == expected
    assert expected != format_lock.build_pairs("minimal", "exclude")


def test_format_lock_cli_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    format_lock.main([])
    path = tmp_path / "data/sft_format_lock/mypt_format_lock_v1.jsonl"
    assert path.read_bytes() == to_jsonl(format_lock.generate("full", "include", 42)).encode()
    with pytest.raises(SystemExit):
        format_lock.main(["--math", "some"])


def test_number_in_words():
    cases = {0: "zero", 13: "thirteen", 40: "forty", 42: "forty-two", 101: "one hundred one",
             250: "two hundred fifty", 1000: "one thousand", 1000000: "one million"}
    for n, words in cases.items():
        assert format_lock.number_in_words(n) == words


# --- echo ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "mode,upstream", [("exclude", 14465), ("include", 20591), ("only", 6126)]
)
def test_echo_sizes_match_upstream(mode, upstream):
    assert within(len(echo.generate(mode)), upstream)


def test_beta_is_capped_and_keeps_the_seed_doc_prompts():
    beta = echo.generate("exclude", 2500)
    assert len(beta) == 2500
    got = set(pairs(beta))
    assert ("Repeat: Hello world", "Hello world") in got
    assert ("Echo: Testing 123", "Testing 123") in got
    for seed in (1, 2, 3):
        other = set(pairs(echo.generate("exclude", 2500, seed=seed)))
        assert ("Repeat: Hello world", "Hello world") in other and other != got
    pool = Counter(pairs(echo.generate("exclude")))
    assert not Counter(pairs(beta)) - pool  # a subset of the uncapped pool
    categories = Counter(r["context"].split("category: ")[1] for r in beta)
    assert set(categories) == {"echo_word_en", "echo_phrase_en", "echo_number", "echo_sentence_en",
                               "echo_word_de", "echo_phrase_de", "echo_sentence_de"}
    assert 600 < categories["echo_word_en"] < 850  # a random subset keeps the proportions


def test_echo_cap_edge_cases():
    assert len(echo.generate("only", 0)) == len(echo.generate("only", None))
    assert len(echo.generate("only", 10)) == 10
    with pytest.raises(ValueError, match="max_examples"):
        echo.generate("only", -5)
    with pytest.raises(SystemExit):
        echo.main(["--max_examples", "-1", "--output_dir", "never"])


def test_gamma_holds_gibberish_in_both_languages():
    gamma = echo.generate("only")
    got = set(pairs(gamma))
    assert ("Say: Blurpix", "Blurpix") in got
    assert ("Repeat: Zanthor quexling", "Zanthor quexling") in got
    assert {r["context"].split("category: ")[1] for r in gamma} == {
        "echo_gibberish_word", "echo_gibberish_sentence", "echo_gibberish_word_de", "echo_gibberish_sentence_de",
    }
    answers = {a for _, a in got}
    assert "qwerty" in answers and "ZORB" in answers and "bLuRpIx" in answers and "12zorb" in answers
    german = {a for r, (_, a) in zip(gamma, pairs(gamma), strict=True) if r["language"] == "de"}
    assert any(ch in "äöüß" for a in german for ch in a)
    procedural = set(gibberish.nonsense_words(16, echo.PROCEDURAL_SEED))
    assert procedural <= answers  # the procedural part is in the training pool


def test_echo_prefixes_match_content_language():
    for record in echo.generate("include"):
        (question, answer) = pairs([record])[0]
        prefix = question[: -len(answer) - 1]
        assert question == f"{prefix} {answer}"
        category = record["context"].split("category: ")[1]
        if record["language"] == "de":
            assert prefix in content_echo.PREFIXES_DE and category.endswith("_de")
        else:
            assert prefix in content_echo.PREFIXES_EN and not category.endswith("_de")


def test_echo_cli_determinism(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for out, seed in (("a", "42"), ("b", "42"), ("c", "43")):
        echo.main(["--gibberish", "exclude", "--max_examples", "300", "--seed", seed, "--output_dir", out])
    a, b, c = (tmp_path / d / "mypt_echo_diverse.jsonl" for d in "abc")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 300
    assert json.loads(lines[7])["context"].startswith("episode_id: echo_0007, category: echo_")
    assert "300" in capsys.readouterr().out


# --- procedural gibberish -----------------------------------------------------------------------

def test_nonsense_words_are_deterministic_and_pronounceable():
    words = gibberish.nonsense_words(50, seed=3)
    assert words == gibberish.nonsense_words(50, seed=3)
    assert words != gibberish.nonsense_words(50, seed=4)
    assert len({w.lower() for w in words}) == 50
    assert all(w[0].isupper() and w.isalpha() and any(v in w.lower() for v in "aeiouy") for w in words)
    german = gibberish.nonsense_words(50, seed=3, german=True)
    assert any(ch in "äöüß" for w in german for ch in w)
    sentences = gibberish.nonsense_sentences(3, seed=5)
    assert sentences == gibberish.nonsense_sentences(3, seed=5)
    assert all(s.endswith(".") and 3 <= len(s.split()) <= 5 for s in sentences)


def test_held_out_words_never_occur_in_training_data():
    held_out = gibberish.held_out_words(300, seed=11) + gibberish.held_out_words(50, seed=12, german=True)
    assert all(gibberish.split_of(w) == "heldout" for w in held_out)
    training_tokens = {
        token.lower()
        for _, answer in pairs(echo.generate("include"))
        for token in re.findall(r"[^\W\d_]+", answer)
    }
    assert "blurpix" in training_tokens
    assert not {w.lower() for w in held_out} & training_tokens
    for seed in (0, 1, 2):
        assert not set(held_out) & set(gibberish.nonsense_words(300, seed))


# --- records: atomic write ----------------------------------------------------------------------

def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("previous\n")
    with pytest.raises(TypeError):
        write_jsonl(path, [make_record("q", "a", "c", "en"), {"bad": object()}])
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatagenError, match="file/sub/out.jsonl: cannot write output"):
        write_jsonl(tmp_path / "file" / "sub" / "out.jsonl", [])
