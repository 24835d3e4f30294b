"""prepare: byte layout against an independent upstream-style reference, mask rule, bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from mypt_jax.data import episodes, prepare
from mypt_jax.data.chat import serialize_conversation
from mypt_jax.data.tokenizer import Tokenizer, gpt2_encoding

# ----- an independent re-statement of the upstream algorithm (spec section 5), literals only -----

REF_TAGS = [
    ("myPT_system_open", "<myPT_system>"),
    ("myPT_system_close", "</myPT_system>"),
    ("myPT_user_open", "<myPT_user>"),
    ("myPT_user_close", "</myPT_user>"),
    ("myPT_user_context_open", "<myPT_user_context>"),
    ("myPT_user_context_close", "</myPT_user_context>"),
    ("myPT_assistant_open", "<myPT_assistant>"),
    ("myPT_assistant_close", "</myPT_assistant>"),
    ("myPT_assistant_context_open", "<myPT_assistant_context>"),
    ("myPT_assistant_context_close", "</myPT_assistant_context>"),
    ("myPT_toolcall_open", "<myPT_toolcall>"),
    ("myPT_toolcall_close", "</myPT_toolcall>"),
    ("myPT_toolresult_open", "<myPT_toolresult>"),
    ("myPT_toolresult_close", "</myPT_toolresult>"),
    ("myPT_eot", "<myPT_eot>"),
]
REF_ID = {tag: 50257 + i for i, (_, tag) in enumerate(REF_TAGS)}
REF_SYSTEM = "You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly."
REF_SPLITTER = re.compile("|".join(re.escape(t) for t in sorted(REF_ID, key=len, reverse=True)))


def ref_serialize(item: dict) -> str:
    text = f"<myPT_system>{REF_SYSTEM}</myPT_system>"
    for msg in item.get("messages", []):
        role, content = msg.get("role", "user"), msg.get("content", "")
        if role == "user":
            text += f"<myPT_user>{content}</myPT_user>"
        elif role == "assistant":
            text += f"<myPT_assistant>{content}</myPT_assistant>"
    return text + "<myPT_eot>"


def ref_encode(text: str) -> list[int]:
    ids, last = [], 0
    for m in REF_SPLITTER.finditer(text):
        ids += gpt2_encoding().encode_ordinary(text[last : m.start()]) if m.start() > last else []
        ids.append(REF_ID[m.group()])
        last = m.end()
    return ids + (gpt2_encoding().encode_ordinary(text[last:]) if last < len(text) else [])


def ref_mask(ids: list[int]) -> list[int]:
    out, inside = [], False
    for t in ids:
        if t == 50263:
            out.append(0)
            inside = True
        elif t == 50264:
            out.append(1)
            inside = False
        elif t == 50271:
            out.append(1)
        else:
            out.append(1 if inside else 0)
    return out


def ref_prepare(jsonl: Path, out: Path, val_split=0.1, seed=42, tokens_per_shard=50_000_000):
    """Upstream behaviour, including its first-shard placement."""
    items = []
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    np.random.seed(seed)
    perm = np.random.permutation(len(items))
    val = set(perm[: int(len(items) * val_split)])
    for split in ("train", "val"):
        (out / split).mkdir(parents=True)
    state = {s: {"tok": [], "msk": [], "eps": [], "written": 0} for s in ("train", "val")}

    def flush(split):
        st = state[split]
        if not st["tok"]:
            return
        d = out / split
        if st["written"] > 0 or len(st["tok"]) >= tokens_per_shard:
            d = d / f"shard_{st['written']:05d}"
        d.mkdir(exist_ok=True)
        np.array(st["tok"], dtype=np.uint32).tofile(d / "tokens.bin")
        np.array(st["msk"], dtype=np.uint8).tofile(d / "mask.bin")
        np.array(st["eps"], dtype=np.uint64).tofile(d / "episodes.idx")
        st.update(tok=[], msk=[], eps=[], written=st["written"] + 1)

    for i, item in enumerate(items):
        split = "val" if i in val else "train"
        ids = ref_encode(ref_serialize(item))
        st = state[split]
        if st["tok"] and len(st["tok"]) + len(ids) > tokens_per_shard:
            flush(split)
        st["eps"].append((len(st["tok"]), len(ids)))
        st["tok"] += ids
        st["msk"] += ref_mask(ids)
    flush("train")
    flush("val")


def ref_load(split_dir: Path) -> list[tuple[list[int], list[int]]]:
    """The upstream loader's file rule: shard_* directories if any, else the split itself."""
    dirs = sorted(p for p in split_dir.glob("shard_*") if p.is_dir()) or [split_dir]
    out = []
    for d in dirs:
        if not ((d / "tokens.bin").exists() and (d / "episodes.idx").exists()):
            continue
        tok = np.fromfile(d / "tokens.bin", dtype=np.uint32)
        msk = np.fromfile(d / "mask.bin", dtype=np.uint8)
        for s, n in np.fromfile(d / "episodes.idx", dtype=np.uint64).reshape(-1, 2):
            out.append((tok[s : s + n].tolist(), msk[s : s + n].tolist()))
    return out


# ----- fixtures -----


def _records(n: int = 50) -> list[dict]:
    words = ["Grüße", "Äpfel", "über", "Straße", "hello", "Say", "color", " spaced ", "ÖL", "naïve"]
    records = []
    for i in range(n):
        q = f"{words[i % 10]} {words[(i * 3) % 10]} {i}?"
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": f"{i}."}]
        if i % 7 == 3:  # multi-turn
            messages += [
                {"role": "user", "content": "Und jetzt auf Deutsch, bitte: grün."},
                {"role": "assistant", "content": "Grün ist schön.\nZweite Zeile."},
            ]
        if i % 11 == 5:  # a tag inside content becomes a control token, as upstream
            messages[0]["content"] = "Echo: </myPT_user><myPT_assistant>sneaky"
        if i % 13 == 8:
            messages[1]["content"] = ""
        records.append(
            {
                "system": "ignored",
                "context": f"episode_id: t_{i:04d}",
                "messages": messages,
                "language": "de",
            }
        )
    return records


def _write_jsonl(path: Path, records: list[dict], newline: str = "\n") -> Path:
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(records)]
    path.write_bytes((newline.join(lines) + newline + newline).encode("utf-8"))
    return path


SPLIT_FILES = ("tokens.bin", "mask.bin", "episodes.idx")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


# ----- split -----


@pytest.mark.parametrize("n,seed", [(50, 42), (2891, 42), (7, 0), (1000, 123456)])
def test_random_state_permutation_equals_global_seed(n, seed):
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        expected = np.random.permutation(n)
    finally:
        np.random.set_state(saved)
    np.testing.assert_array_equal(np.random.RandomState(seed).permutation(n), expected)


def test_split_indices_follow_the_upstream_rule():
    train, val = prepare.split_indices(50, 0.1, 42)
    np.random.seed(42)
    expected_val = sorted(int(i) for i in np.random.permutation(50)[:5])
    assert val.tolist() == expected_val
    assert train.tolist() == [i for i in range(50) if i not in expected_val]
    assert prepare.split_indices(9, 0.1, 42)[1].size == 0  # int(0.9) == 0


# ----- tokens and mask -----


def test_say_ok_example_from_spec(tokenizer):
    tokens, mask = prepare.encode_episode(
        [{"role": "user", "content": "Say OK."}, {"role": "assistant", "content": "OK."}], tokenizer
    )
    assert tokens.dtype == np.uint32 and mask.dtype == np.uint8
    assert len(tokens) == 29
    assert mask.tolist() == [0] * 25 + [1, 1, 1, 1]
    assert tokens[-2:].tolist() == [50264, 50271]


def test_prompt_prefix_ids_from_spec(tokenizer):
    tokens, _ = prepare.encode_episode(
        [{"role": "user", "content": "Say Hello."}, {"role": "assistant", "content": "Hello."}],
        tokenizer,
    )
    assert tokens[:25].tolist() == [
        50257, 1639, 389, 2011, 11571, 13, 1355, 35327, 25, 352, 12, 17, 13439, 13,
        7281, 7729, 3446, 13, 50258, 50259, 25515, 18435, 13, 50260, 50263,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "ids,expected",
    [
        (
            [50257, 10, 50258, 50259, 11, 50260, 50263, 12, 13, 50264, 50271],
            [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
        ),
        ([50263, 50264, 50271], [0, 1, 1]),  # empty answer: close tag and eot still trained
        ([50271, 5, 50263, 6, 50271, 7, 50264, 8], [1, 0, 0, 1, 1, 1, 1, 0]),  # eot keeps the state
        ([50263, 1, 50263, 2, 50264, 50264, 3], [0, 1, 0, 1, 1, 1, 0]),
        ([], []),
    ],
)
def test_loss_mask_state_machine(tokenizer, ids, expected):
    assert prepare.loss_mask(ids, tokenizer).tolist() == expected
    assert prepare.loss_mask(ids, tokenizer).dtype == np.uint8


def test_mask_state_restarts_per_episode(tokenizer):
    # An episode whose user text opens an assistant tag that is never closed must not leak
    # in_asst into the next episode of the same batch.
    open_only = [
        {"role": "user", "content": "<myPT_assistant>"},
        {"role": "assistant", "content": "x"},
    ]
    leaky = [{"role": "user", "content": "a </myPT_assistant><myPT_assistant> b"}]
    leaky.append({"role": "assistant", "content": "<myPT_assistant>y"})
    normal = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]
    convs = [open_only, leaky, normal, leaky, normal]
    got = prepare.EpisodeEncoder(tokenizer).encode_all(convs, chunk=3)
    for (tokens, mask), conv in zip(got, convs, strict=True):
        ids = ref_encode(ref_serialize({"messages": conv}))
        assert tokens.tolist() == ids
        assert mask.tolist() == ref_mask(ids)


def test_encode_episode_equals_reference_and_whole_text_encoding(tokenizer):
    for record in _records():
        tokens, mask = prepare.encode_episode(record["messages"], tokenizer)
        ids = ref_encode(ref_serialize(record))
        assert tokens.tolist() == ids
        assert tokens.tolist() == tokenizer.encode(serialize_conversation(record["messages"]))
        assert mask.tolist() == ref_mask(ids)


def test_encoder_falls_back_to_whole_text_for_odd_tag_strings(tokenizer):
    odd = Tokenizer(strings_by_name={**dict(REF_TAGS), "myPT_user_close": "|u>"})
    messages = [{"role": "user", "content": "a <b"}, {"role": "assistant", "content": "c"}]
    got = prepare.EpisodeEncoder(odd).token_ids(messages)
    text = serialize_conversation(messages)
    assert got == odd.encode(text)
    assert prepare.EpisodeEncoder(tokenizer).token_ids(messages) == ref_encode(text)


# ----- whole datasets -----


def test_byte_identical_to_upstream_reference(tmp_path):
    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records())
    ref_prepare(jsonl, tmp_path / "ref")
    rc = prepare.main(
        ["--input", str(jsonl), "--output_dir", str(tmp_path / "ours"), "--val_split", "0.1",
         "--no_progress"]
    )  # fmt: skip
    assert rc == 0
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    for split in ("train", "val"):
        assert sorted(os.listdir(ours / split)) == sorted(SPLIT_FILES)
        for name in SPLIT_FILES:
            assert (ours / split / name).read_bytes() == (ref / split / name).read_bytes(), (
                split,
                name,
            )
    assert len(ref_load(ours / "val")) == 5 and len(ref_load(ours / "train")) == 45

    state = json.loads((ours / "tokenizer_state.json").read_text())
    assert state == {
        "token_kind": "gpt2",
        "chars": None,
        "base_vocab_size": 50257,
        "model_vocab_size": 50304,
        "special_token_encoder": {tag: REF_ID[tag] for _, tag in REF_TAGS},
        "special_tokens_by_name": {name: REF_ID[tag] for name, tag in REF_TAGS},
        "special_token_version": 1,
    }
    assert (ours / "tokenizer_state.json").read_text() == json.dumps(state, indent=2)

    meta = json.loads((ours / "dataset_metadata.json").read_text())
    train_mask = np.fromfile(ref / "train" / "mask.bin", dtype=np.uint8)
    val_mask = np.fromfile(ref / "val" / "mask.bin", dtype=np.uint8)
    upstream_fields = {
        "schema": "episode_indexed_sft_v1",
        "has_loss_mask": True,
        "num_conversations": 50,
        "num_train_episodes": 45,
        "num_val_episodes": 5,
        "num_train_tokens": train_mask.size,
        "num_val_tokens": val_mask.size,
        "num_train_shards": 1,
        "num_val_shards": 1,
        "train_mask_ratio": int(train_mask.sum()) / train_mask.size,
        "val_mask_ratio": int(val_mask.sum()) / val_mask.size,
        "tokenization": "gpt2",
        "vocab_size": 50304,
        "tokens_per_shard": 50_000_000,
        "val_split": 0.1,
        "special_tokens_used": [name for name, _ in REF_TAGS],
    }
    assert list(meta)[: len(upstream_fields)] == list(upstream_fields)
    assert {k: meta[k] for k in upstream_fields} == upstream_fields
    assert meta["seed"] == 42 and meta["skipped_invalid"] == 0


def test_crlf_input_gives_the_same_bytes(tmp_path):
    records = _records(20)
    prepare.prepare(_write_jsonl(tmp_path / "a.jsonl", records), tmp_path / "a", progress=False)
    crlf = _write_jsonl(tmp_path / "b.jsonl", records, newline="\r\n")
    prepare.prepare(crlf, tmp_path / "b", progress=False)
    for split in ("train", "val"):
        assert _tree(tmp_path / "a" / split) == _tree(tmp_path / "b" / split)


def test_multi_shard_loses_nothing(tmp_path):
    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records())
    prepare.prepare(jsonl, tmp_path / "one", progress=False)
    meta = prepare.prepare(jsonl, tmp_path / "many", tokens_per_shard=200, progress=False)
    ref_prepare(jsonl, tmp_path / "ref", tokens_per_shard=200)
    assert meta["num_train_shards"] > 2 and meta["num_val_shards"] >= 2
    for split in ("train", "val"):
        split_dir = tmp_path / "many" / split
        names = sorted(os.listdir(split_dir))
        assert names == [f"shard_{i:05d}" for i in range(meta[f"num_{split}_shards"])]
        single = ref_load(tmp_path / "one" / split)
        assert ref_load(split_dir) == single  # every episode, in order, masks included
        assert len(single) == meta[f"num_{split}_episodes"]
        for shard in names:
            tokens = np.fromfile(split_dir / shard / "tokens.bin", dtype=np.uint32)
            assert tokens.size <= 200 or len(ref_load(split_dir / shard)) == 1
        assert sum(s.episodes_Ex2.shape[0] for s in episodes.read_split(split_dir)) == len(single)
        # Same cut points as the upstream; only the first shard's place differs.
        ref_tree = {
            k if k.startswith("shard_") else f"shard_00000/{k}": v
            for k, v in _tree(tmp_path / "ref" / split).items()
        }
        assert _tree(split_dir) == ref_tree
    # The upstream's own layout drops its first shard under the same loader rule.
    assert len(ref_load(tmp_path / "ref" / "train")) < meta["num_train_episodes"]


def test_plan_shards_cuts_only_on_overflow():
    got = prepare.plan_shards([10, 10, 5, 30, 1], tokens_per_shard=20)
    assert got == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert prepare.plan_shards([], 20) == []
    assert prepare.plan_shards([3, 4], 20) == [range(0, 2)]


def test_lone_full_shard_goes_to_shard_dir_like_upstream(tmp_path):
    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records(12))
    prepare.prepare(jsonl, tmp_path / "ours", val_split=0.1, tokens_per_shard=25, progress=False)
    ref_prepare(jsonl, tmp_path / "ref", val_split=0.1, tokens_per_shard=25)
    # val has one episode of >= 25 tokens: the upstream puts it in shard_00000, and so do we.
    assert _tree(tmp_path / "ours" / "val") == _tree(tmp_path / "ref" / "val")
    assert list(_tree(tmp_path / "ours" / "val")) == [
        f"shard_00000/{n}" for n in sorted(SPLIT_FILES)
    ]


def test_empty_val_split_is_an_empty_directory(tmp_path):
    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records(9))
    meta = prepare.prepare(jsonl, tmp_path / "out", val_split=0.1, progress=False)
    assert (tmp_path / "out" / "val").is_dir() and not os.listdir(tmp_path / "out" / "val")
    assert meta["num_val_episodes"] == 0 and meta["num_val_shards"] == 0
    assert meta["val_mask_ratio"] == 0 and meta["num_train_episodes"] == 9
    ref_prepare(jsonl, tmp_path / "ref")
    assert _tree(tmp_path / "out" / "train") == _tree(tmp_path / "ref" / "train")


def test_rerun_replaces_dataset_without_leftovers(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", _records(30))
    b = _write_jsonl(tmp_path / "b.jsonl", _records(12))
    out = tmp_path / "data" / "out"
    prepare.prepare(a, out, progress=False)
    prepare.prepare(b, out, progress=False)
    prepare.prepare(b, tmp_path / "fresh", progress=False)
    assert _tree(out) == _tree(tmp_path / "fresh")
    assert json.loads((out / "dataset_metadata.json").read_text())["num_conversations"] == 12
    assert os.listdir(tmp_path / "data") == ["out"]


# ----- bad input -----

GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
)


@pytest.mark.parametrize(
    "bad_line,needle",
    [
        ('{"messages": [', "malformed JSON"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
        (
            '{"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}',
            "'system'",
        ),
        (
            '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
            "expected a string",
        ),
        ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}', "no 'role'"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"conversation": []}', "no 'messages'"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, bad_line, needle):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(f"{GOOD}\n\n{bad_line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(prepare.PrepareError) as e:
        prepare.prepare(jsonl, tmp_path / "out", progress=False)
    assert f"{jsonl}:3:" in str(e.value) and needle in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_skip_invalid_counts_and_keeps_good_records(tmp_path, capsys):
    records = _records(20)
    clean = _write_jsonl(tmp_path / "clean.jsonl", records)
    lines = clean.read_text(encoding="utf-8").splitlines()
    lines[4:4] = ["{broken", '{"messages": [{"role": "tool", "content": "x"}]}']
    lines.append('{"messages": []}')
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(prepare.PrepareError, match=r"dirty\.jsonl:5: malformed JSON"):
        prepare.read_conversations(dirty)
    assert len(prepare.read_conversations(dirty, skip_invalid=True)) == 20
    args = [
        "--input",
        str(dirty),
        "--output_dir",
        str(tmp_path / "d"),
        "--skip_invalid",
        "--no_progress",
    ]
    assert prepare.main(args) == 0
    assert "3 invalid skipped" in capsys.readouterr().out
    prepare.prepare(clean, tmp_path / "c", progress=False)
    for split in ("train", "val"):
        assert _tree(tmp_path / "d" / split) == _tree(tmp_path / "c" / split)
    assert (
        json.loads((tmp_path / "d" / "dataset_metadata.json").read_text())["skipped_invalid"] == 3
    )


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_input_is_an_error(tmp_path, content):
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text(content)
    with pytest.raises(prepare.PrepareError, match=r"empty\.jsonl: no conversations"):
        prepare.prepare(jsonl, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_reports_missing_input_and_unwritable_output(tmp_path, capsys):
    assert (
        prepare.main(["--input", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "o")])
        == 1
    )
    assert f"{tmp_path / 'nope.jsonl'}: input file not found" in capsys.readouterr().err

    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records(5))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert prepare.main(["--input", str(jsonl), "--output_dir", str(blocker / "sub" / "out")]) == 1
    assert (
        f"{blocker / 'sub' / 'out'}: cannot create the output directory" in capsys.readouterr().err
    )
    assert prepare.main(["--input", str(jsonl), "--output_dir", str(blocker)]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a_file", "chat.jsonl"]


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(tmp_path):
    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records(5))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(prepare.PrepareError, match="not empty and holds no dataset"):
        prepare.prepare(jsonl, tmp_path / "home", progress=False)
    assert os.listdir(tmp_path / "home") == ["notes.txt"]


def test_refuses_input_inside_output_and_follows_symlinked_output(tmp_path):
    out = tmp_path / "out"
    prepare.prepare(_write_jsonl(tmp_path / "chat.jsonl", _records(5)), out, progress=False)
    inside = _write_jsonl(out / "chat.jsonl", _records(5))
    with pytest.raises(prepare.PrepareError, match="contains the input"):
        prepare.prepare(inside, out, progress=False)
    assert inside.is_file()
    (tmp_path / "link").symlink_to(out, target_is_directory=True)
    inside.unlink()
    meta = prepare.prepare(tmp_path / "chat.jsonl", tmp_path / "link", progress=False)
    assert (tmp_path / "link").is_symlink() and meta["num_conversations"] == 5
    assert (out / "train" / "tokens.bin").is_file()


def test_failed_run_leaves_existing_dataset_untouched(tmp_path, monkeypatch):
    good = _write_jsonl(tmp_path / "good.jsonl", _records(20))
    out = tmp_path / "out"
    prepare.prepare(good, out, progress=False)
    before = _tree(out)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n{oops\n", encoding="utf-8")
    with pytest.raises(prepare.PrepareError, match=r"bad\.jsonl:2:"):
        prepare.prepare(bad, out, progress=False)
    assert _tree(out) == before

    calls = []

    def failing_write_shard(path, eps):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write_shard(path, eps)

    real_write_shard = episodes.write_shard
    monkeypatch.setattr(episodes, "write_shard", failing_write_shard)
    with pytest.raises(prepare.PrepareError, match="No space left"):
        prepare.prepare(good, out, tokens_per_shard=300, progress=False)
    assert _tree(out) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "good.jsonl", "out"]


def test_cli_rejects_char_tokenization(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prepare.main(["--input", "x", "--output_dir", str(tmp_path), "--tokenization", "char"])
    assert e.value.code == 2 and "not supported" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    import subprocess
    import sys

    jsonl = _write_jsonl(tmp_path / "chat.jsonl", _records(10))
    run = subprocess.run(
        [sys.executable, "-m", "mypt_jax.prepare", "--input", str(jsonl), "--output_dir",
         str(tmp_path / "out"), "--val_split", "0.1"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "train: 9 episodes" in run.stdout and (tmp_path / "out" / "val" / "tokens.bin").is_file()
