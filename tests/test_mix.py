"""Mixer: upstream ratio semantics, replay share, mix_source tags, bad input, seed-doc Step 1."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from datagen import echo, format_lock, mix
from datagen.records import DatagenError, make_record, read_jsonl, to_jsonl


def records(n, tag):
    return [make_record(f"Say {tag}{i}.", f"{tag}{i}.", f"episode_id: {tag}_{i:04d}", "en") for i in range(n)]


def write(path: Path, recs) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_jsonl(recs), encoding="utf-8")
    return str(path)


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def run_mix(*argv: str) -> None:
    mix.main(list(argv))


# --- parsing and naming -------------------------------------------------------------------------

def test_parse_input_splits_on_last_colon_only_for_floats():
    assert mix.parse_input("a.jsonl") == ("a.jsonl", 1.0)
    assert mix.parse_input("a.jsonl:0.15") == ("a.jsonl", 0.15)
    assert mix.parse_input("dir:x/a.jsonl:2") == ("dir:x/a.jsonl", 2.0)
    assert mix.parse_input("C:/data/a.jsonl") == ("C:/data/a.jsonl", 1.0)
    for bad in ("a.jsonl:0", "a.jsonl:-1", "a.jsonl:nan"):
        with pytest.raises(DatagenError, match="ratio must be a positive number"):
            mix.parse_input(bad)


def test_mix_source_names_tell_same_stems_apart():
    assert mix.mix_source_names(["d/sft_echo_gamma/mypt_echo_diverse.jsonl", "d/sft_echo_beta/mypt_echo_diverse.jsonl",
                                 "d/alpha/mypt_format_lock_v1.jsonl"]) == [
        "sft_echo_gamma/mypt_echo_diverse", "sft_echo_beta/mypt_echo_diverse", "mypt_format_lock_v1"]
    assert mix.mix_source_names(["a/x.jsonl", "a/x.jsonl"]) == ["a/x#1", "a/x#2"]


# --- sampling -----------------------------------------------------------------------------------

def test_ratio_sampling_follows_upstream():
    recs = records(10, "r")
    assert mix.sample_source(recs, 1.0, seed=5) == recs
    assert mix.sample_source(recs, 0.5, seed=5) == random.Random(5).sample(recs, 5)
    assert len(mix.sample_source(recs, 0.01, seed=5)) == 1  # max(1, int(N * ratio))
    over = mix.sample_source(recs, 2.5, seed=5)
    assert over[:20] == recs + recs and over[20:] == random.Random(5).sample(recs, 5)


def test_mix_tags_concatenates_and_shuffles_with_seed_plus_one():
    a, b = records(4, "a"), records(3, "b")
    b[0] = {**b[0], "mix_source": "kept"}
    plain = mix.mix([mix.Source(a, "A"), mix.Source(b, "B")], seed=9)
    assert [r["mix_source"] for r in plain] == ["A"] * 4 + ["kept", "B", "B"]
    assert all(list(r)[-1] == "mix_source" for r in plain)
    assert "mix_source" not in a[0]  # inputs are not modified
    shuffled = mix.mix([mix.Source(a, "A"), mix.Source(b, "B")], seed=9, shuffle=True)
    expected = list(plain)
    random.Random(10).shuffle(expected)
    assert shuffled == expected


def test_ratios_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = write(tmp_path / "a.jsonl", records(40, "a"))
    b = write(tmp_path / "b.jsonl", records(10, "b"))
    run_mix("--inputs", f"{a}:0.25", f"{b}:1.5", "--output", "out/m.jsonl")
    counts = Counter(r["mix_source"] for r in read("out/m.jsonl"))
    assert counts == {"a": 10, "b": 15}
    meta = json.loads((tmp_path / "out/m.mix_meta.json").read_text())
    assert meta["total_episodes"] == 25 and [s["sampled"] for s in meta["sources"]] == [10, 15]


# --- replay share -------------------------------------------------------------------------------

def test_replay_share_is_a_share_of_the_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = write(tmp_path / "new.jsonl", records(100, "n"))
    r1 = write(tmp_path / "r1.jsonl", records(30, "x"))
    r2 = write(tmp_path / "r2.jsonl", records(10, "y"))
    run_mix("--inputs", first, r1, r2, "--output", "m.jsonl", "--shuffle", "--replay_share", "0.15")
    out = read("m.jsonl")
    counts = Counter(r["mix_source"] for r in out)
    # 100 * 0.15 / 0.85 = 17.6 -> 18 replay records, split 30:10 -> 13.5 : 4.5 -> 14 : 4.
    assert counts == {"new": 100, "r1": 14, "r2": 4}
    assert abs((counts["r1"] + counts["r2"]) / len(out) - 0.15) <= 1 / len(out)
    assert len({r["context"] for r in out if r["mix_source"] == "r1"}) == 14  # no repeats needed


def test_replay_repeats_a_file_that_is_too_small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = write(tmp_path / "new.jsonl", records(100, "n"))
    small = write(tmp_path / "small.jsonl", records(7, "s"))
    run_mix("--inputs", first, small, "--output", "m.jsonl", "--replay_share", "0.5")
    replay = [r["context"] for r in read("m.jsonl") if r["mix_source"] == "small"]
    assert len(replay) == 100 and set(Counter(replay).values()) == {14, 15}


def test_replay_share_rejects_bad_combinations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = write(tmp_path / "a.jsonl", records(5, "a"))
    b = write(tmp_path / "b.jsonl", records(5, "b"))
    for argv, message in [
        ((a, f"{b}:0.5", "--replay_share", "0.15"), "path:RATIO"),
        ((a, b, "--replay_share", "1.0"), "strictly between 0 and 1"),
        ((a, b, "--replay_share", "0"), "strictly between 0 and 1"),
        ((a, "--replay_share", "0.2"), "at least two inputs"),
    ]:
        with pytest.raises(SystemExit, match=message):
            run_mix("--inputs", *argv[:-2], "--output", "m.jsonl", *argv[-2:])
    assert not (tmp_path / "m.jsonl").exists()


# --- bad input ----------------------------------------------------------------------------------

GOOD = to_jsonl(records(2, "g"))


@pytest.mark.parametrize(
    "text,message",
    [
        (GOOD + "{not json\n", "bad.jsonl:3: malformed JSON"),
        (GOOD + '{"messages": [{"role": "user", "content": "hi"}]}\n', "bad.jsonl:3: no assistant turn"),
        ('{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
         "bad.jsonl:1: messages\\[0\\] has unknown role 'tool'"),
        ("[1, 2]\n", "bad.jsonl:1: expected a JSON object"),
        ("", "bad.jsonl: no records"),
        ("\n\n", "bad.jsonl: no records"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, text, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(DatagenError, match=message):
        read_jsonl(bad)


def test_mix_fails_on_bad_line_without_touching_previous_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = write(tmp_path / "good.jsonl", records(3, "g"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n{oops\n" + GOOD + "[]\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text("previous good mix\n")
    with pytest.raises(SystemExit, match="bad.jsonl:4: malformed JSON"):
        run_mix("--inputs", good, str(bad), "--output", "m.jsonl")
    assert (tmp_path / "m.jsonl").read_text() == "previous good mix\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "m.jsonl"]


def test_skip_invalid_skips_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n{oops\n" + GOOD + "[]\n", encoding="utf-8")
    run_mix("--inputs", str(bad), "--output", "m.jsonl", "--skip_invalid")
    assert len(read("m.jsonl")) == 4
    assert "skipped 2 invalid lines" in capsys.readouterr().out


def test_missing_input_and_unwritable_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = write(tmp_path / "good.jsonl", records(3, "g"))
    with pytest.raises(SystemExit, match="nope.jsonl: input file not found"):
        run_mix("--inputs", good, "nope.jsonl", "--output", "m.jsonl")
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(SystemExit, match="blocker/m.jsonl: cannot write output"):
        run_mix("--inputs", good, "--output", "blocker/m.jsonl")


# --- the seed doc's Step 1 commands -------------------------------------------------------------

def test_seed_doc_step1_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    format_lock.main(["--mode", "minimal", "--math", "exclude", "--output_dir", "data/sft_format_lock_alpha"])
    echo.main(["--gibberish", "exclude", "--max_examples", "2500", "--output_dir", "data/sft_echo_beta"])
    run_mix("--inputs", "data/sft_echo_beta/mypt_echo_diverse.jsonl",
            "data/sft_format_lock_alpha/mypt_format_lock_v1.jsonl",
            "--output", "data/sft_mixed/phase3a1_beta_mixed.jsonl", "--shuffle")
    echo.main(["--gibberish", "only", "--output_dir", "data/sft_echo_gamma"])
    run_mix("--inputs", "data/sft_echo_gamma/mypt_echo_diverse.jsonl",
            "data/sft_echo_beta/mypt_echo_diverse.jsonl",
            "--output", "data/sft_mixed/phase3a1_gamma_mixed.jsonl", "--shuffle")
    format_lock.main(["--mode", "full", "--math", "include", "--output_dir", "data/sft_format_lock_3a2"])
    run_mix("--inputs", "data/sft_format_lock_3a2/mypt_format_lock_v1.jsonl",
            "data/sft_echo_beta/mypt_echo_diverse.jsonl",
            "--output", "data/sft_mixed/phase3a2_mixed.jsonl", "--shuffle")

    sizes = {
        name: len(read(tmp_path / "data" / name))
        for name in [
            "sft_format_lock_alpha/mypt_format_lock_v1.jsonl",
            "sft_echo_beta/mypt_echo_diverse.jsonl",
            "sft_echo_gamma/mypt_echo_diverse.jsonl",
            "sft_format_lock_3a2/mypt_format_lock_v1.jsonl",
            "sft_mixed/phase3a1_beta_mixed.jsonl",
            "sft_mixed/phase3a1_gamma_mixed.jsonl",
            "sft_mixed/phase3a2_mixed.jsonl",
        ]
    }
    alpha, beta, gamma, fl3a2, mix_beta, mix_gamma, mix_3a2 = sizes.values()
    # Upstream: 391, 2,500, 6,126, 12,429 (spec section 5); ours within 15 %.
    assert 332 <= alpha <= 450 and beta == 2500 and 5207 <= gamma <= 7045 and 10564 <= fl3a2 <= 14293
    assert (mix_beta, mix_gamma, mix_3a2) == (beta + alpha, gamma + beta, fl3a2 + beta)
    tags = Counter(r["mix_source"] for r in read(tmp_path / "data/sft_mixed/phase3a1_gamma_mixed.jsonl"))
    assert tags == {"sft_echo_gamma/mypt_echo_diverse": gamma, "sft_echo_beta/mypt_echo_diverse": beta}
    for meta in (tmp_path / "data/sft_mixed").glob("*.mix_meta.json"):
        assert json.loads(meta.read_text())["shuffled"] is True
