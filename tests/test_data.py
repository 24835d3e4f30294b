"""The loader against an independent numpy version of the upstream GPTEpisodeDataLoader."""

import logging
import pickle
import re
import shutil
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mypt_jax.data import episodes
from mypt_jax.data import inspect as data_inspect
from mypt_jax.data import loader as data
from mypt_jax.data.episodes import DatasetError
from mypt_jax.data.tokenizer import SEED_SPECIAL_TOKENS, Tokenizer

CONFIG_FILE = Path(__file__).with_name("data_config_for_tests.py")
EOT = 50271
BLOCK = 16
BATCH = 8
SEED = 7
MIN_TOKENS = 5


# ----------------------------------------------------------------------------- fixtures


def _episode(rng: np.random.RandomState, length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.randint(0, 50257, size=length).astype(np.uint32)
    mask = rng.randint(0, 2, size=length).astype(np.uint8)
    tokens[-1], mask[-1] = EOT, 1
    return tokens, mask


def _make_dataset(root: Path) -> dict[str, list[list[tuple[np.ndarray, np.ndarray]]]]:
    """train: 3 shards (shard_*), val: 1 shard in val/ itself; lengths 1..40 (L = 17)."""
    rng = np.random.RandomState(0)
    splits = {
        "train": [[_episode(rng, int(n)) for n in rng.randint(1, 41, size=k)] for k in (17, 1, 23)],
        "val": [[_episode(rng, int(n)) for n in rng.randint(1, 41, size=13)]],
    }
    for shard_eps in splits["train"]:
        shard_eps.append(_episode(rng, 3))  # always some episodes below MIN_TOKENS
    for s, shard_eps in enumerate(splits["train"]):
        episodes.write_shard(episodes.shard_dir(root / "train", s), shard_eps)
    episodes.write_shard(root / "val", splits["val"][0])
    Tokenizer().save(root / episodes.TOKENIZER_STATE_FILE)
    return splits


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    return root, _make_dataset(root)


@pytest.fixture
def fresh_dataset(tmp_path):
    """A private copy for tests that break files."""
    return tmp_path, _make_dataset(tmp_path)


# ----------------------------------------------------------------------------- the reference


class UpstreamLoader:
    """The upstream algorithm (spec UPSTREAM_TRAINING.md 4), stateful like the original."""

    def __init__(
        self,
        shards,
        *,
        batch_size,
        block_size,
        seed,
        mode="epoch",
        shuffle=True,
        min_tokens=2,
        use_loss_mask=True,
    ):
        self.shards, self.B, self.L = shards, batch_size, block_size + 1
        self.mode, self.seed, self.use_loss_mask = mode, seed, use_loss_mask
        self.shuffle = shuffle and mode == "epoch"
        self.G = [
            (s, e)
            for s, eps in enumerate(shards)
            for e, (t, _) in enumerate(eps)
            if len(t) >= min_tokens
        ]
        self.N, self.epoch, self.pos = len(self.G), 0, 0
        self.order = self._order()
        self.rng = np.random.RandomState(seed)

    def _order(self):
        if self.shuffle:
            return np.random.RandomState(self.seed + self.epoch).permutation(self.N)
        return np.arange(self.N)

    def get_batch(self):
        if self.mode == "epoch":
            picks = []
            for _ in range(self.B):
                if self.pos >= self.N:
                    self.epoch, self.pos = self.epoch + 1, 0
                    self.order = self._order()
                picks.append(self.order[self.pos])
                self.pos += 1
        else:
            picks = self.rng.randint(0, self.N, size=self.B)
        xs, ys, ms = [], [], []
        for g in picks:
            s, e = self.G[g]
            tokens, mask = self.shards[s][e]
            tokens, mask = list(tokens[-self.L :]), list(mask[-self.L :])
            pad = self.L - len(tokens)
            seq = np.array(tokens + [EOT] * pad, dtype=np.int64)
            m = np.array(mask + [0] * pad, dtype=np.float32)
            xs.append(seq[:-1])
            ys.append(seq[1:])
            ms.append(m[1:] if self.use_loss_mask else np.ones(self.L - 1, np.float32))
        return {"inputs": np.stack(xs), "targets": np.stack(ys), "loss_mask": np.stack(ms)}


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(ours, ref):
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert set(a) == {"inputs", "targets", "loss_mask"}
        assert a["inputs"].dtype == np.int32 and a["targets"].dtype == np.int32
        assert a["loss_mask"].dtype == np.float32
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"batch {k} {name}")


def _iterator(root, split="train", **kw):
    args = dict(
        batch_size=BATCH,
        block_size=BLOCK,
        epoch_seed=SEED,
        episode_min_tokens=MIN_TOKENS,
        process_index=0,
        process_count=1,
    )
    args.update(kw)
    return data.make_iterator(root, split, **args)


# ----------------------------------------------------------------------------- upstream parity


@pytest.mark.parametrize("mode,shuffle", [("epoch", True), ("epoch", False), ("random", True)])
def test_matches_upstream_algorithm(dataset, mode, shuffle):
    root, splits = dataset
    for split, n in (("train", 20), ("val", 20)):
        ref = UpstreamLoader(
            splits[split],
            batch_size=BATCH,
            block_size=BLOCK,
            seed=SEED,
            mode=mode,
            shuffle=shuffle,
            min_tokens=MIN_TOKENS,
        )
        if split == "train":
            assert ref.N % BATCH and ref.N * 2 < n * BATCH  # batches straddle several epochs
            assert any(len(t) > BLOCK + 1 for eps in splits[split] for t, _ in eps)
        _assert_batches_equal(
            _take(_iterator(root, split, mode=mode, shuffle=shuffle), n),
            [ref.get_batch() for _ in range(n)],
        )


def test_upstream_parity_unmasked_and_min_tokens(dataset):
    root, splits = dataset
    ref = UpstreamLoader(
        splits["train"],
        batch_size=BATCH,
        block_size=BLOCK,
        seed=3,
        min_tokens=2,
        use_loss_mask=False,
    )
    ours = _take(_iterator(root, epoch_seed=3, episode_min_tokens=2, use_loss_mask=False), 12)
    _assert_batches_equal(ours, [ref.get_batch() for _ in range(12)])


def test_row_alignment_by_hand(tmp_path):
    tokens = np.arange(1000, 1020, dtype=np.uint32)  # 20 tokens > L = 9: keeps 1011..1019
    mask = (np.arange(20) % 2).astype(np.uint8)
    episodes.write_shard(tmp_path / "train", [(tokens, mask), (tokens[:4], mask[:4])])
    Tokenizer().save(tmp_path / episodes.TOKENIZER_STATE_FILE)
    batch = next(
        data.make_iterator(
            tmp_path,
            "train",
            batch_size=2,
            block_size=8,
            epoch_seed=0,
            shuffle=False,
            process_index=0,
            process_count=1,
        )
    )
    np.testing.assert_array_equal(batch["inputs"][0], np.arange(1011, 1019))
    np.testing.assert_array_equal(batch["targets"][0], np.arange(1012, 1020))
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(batch["inputs"][1], [1000, 1001, 1002, 1003] + [EOT] * 4)
    np.testing.assert_array_equal(batch["targets"][1], [1001, 1002, 1003] + [EOT] * 5)
    np.testing.assert_array_equal(batch["loss_mask"][1], [1, 0, 1] + [0] * 5)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_resume_through_orbax_checkpoint(dataset, tmp_path, mode):
    root, _ = dataset
    expected = _take(_iterator(root, mode=mode), 10)
    iterator = _iterator(root, mode=mode)
    _take(iterator, 4)
    assert iterator.get_state() == {"next_index": 4}
    mngr = ocp.CheckpointManager(
        tmp_path / "ckpt",
        options=ocp.CheckpointManagerOptions(max_to_keep=1),
        item_names=("data",),
        item_handlers={"data": grain.checkpoint.CheckpointHandler()},
    )
    mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    mngr.wait_until_finished()
    fresh = _iterator(root, mode=mode)
    mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    mngr.close()
    assert fresh.get_state() == {"next_index": 4}
    _assert_batches_equal(_take(fresh, 6), expected[4:])


def test_resume_with_prefetch_threads(dataset):
    root, _ = dataset
    expected = _take(_iterator(root), 12)
    options = grain.ReadOptions(num_threads=3, prefetch_buffer_size=5)
    iterator = _iterator(root, read_options=options)
    _assert_batches_equal(_take(iterator, 4), expected[:4])
    state = iterator.get_state()  # the buffer ran ahead; the state must not
    iterator.close()
    fresh = _iterator(root, read_options=options)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 8), expected[4:])
    fresh.close()


def test_random_mode_seeks_far_and_back(dataset):
    root, splits = dataset
    ref = UpstreamLoader(
        splits["train"],
        batch_size=BATCH,
        block_size=BLOCK,
        seed=SEED,
        mode="random",
        min_tokens=MIN_TOKENS,
    )
    stream = [ref.get_batch() for _ in range(2100)]
    iterator = _iterator(root, mode="random", start_batch=2090)
    _assert_batches_equal(_take(iterator, 3), stream[2090:2093])
    iterator.set_state({"next_index": 1030})  # back past a snapshot boundary
    _assert_batches_equal(_take(iterator, 2), stream[1030:1032])
    iterator.set_state({"next_index": 5})
    _assert_batches_equal(_take(iterator, 1), stream[5:6])


def test_start_batch_equals_skipping(dataset):
    root, _ = dataset
    _assert_batches_equal(
        _take(_iterator(root, start_batch=17), 3), _take(_iterator(root), 20)[17:]
    )


def test_source_pickles(dataset):
    root, _ = dataset
    source = data.EpisodeBatchSource(
        data.EpisodeSplit.load(root, "train", episode_min_tokens=MIN_TOKENS),
        batch_size=BATCH,
        block_size=BLOCK,
        epoch_seed=SEED,
        pad_id=EOT,
        mode="random",
        split_kwargs=dict(dataset_dir=str(root), split="train", episode_min_tokens=MIN_TOKENS),
    )
    clone = pickle.loads(pickle.dumps(source))
    _assert_batches_equal([clone[7], clone[3]], [source[7], source[3]])


# ----------------------------------------------------------------------------- multi-host


@pytest.mark.parametrize("mode", ["epoch", "random"])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_rows_concatenate_to_global_batch(dataset, mode, process_count):
    root, _ = dataset
    one_host = _take(_iterator(root, mode=mode), 9)
    per_process = [
        _take(_iterator(root, mode=mode, process_index=p, process_count=process_count), 9)
        for p in range(process_count)
    ]
    for k in range(9):
        for name in one_host[k]:
            assert per_process[0][k][name].shape[0] == BATCH // process_count
            joined = np.concatenate([per_process[p][k][name] for p in range(process_count)])
            np.testing.assert_array_equal(joined, one_host[k][name])


def test_batch_not_divisible_by_processes(dataset):
    root, _ = dataset
    with pytest.raises(ValueError, match="batch_size 8 .* process_count 3"):
        _iterator(root, process_index=0, process_count=3)


def test_global_batch_on_mesh(dataset):
    import jax

    from mypt_jax.parallel.sharding import make_mesh

    root, _ = dataset
    local = next(_iterator(root))
    mesh = make_mesh((-1, 1, 1))
    arrays = data.global_batch(local, mesh)
    for name, value in local.items():
        assert arrays[name].shape == value.shape
        assert arrays[name].sharding.spec[0] == ("data", "fsdp")
        np.testing.assert_array_equal(np.asarray(arrays[name]), value)
    assert len(arrays["inputs"].sharding.device_set) == len(jax.devices())


# ----------------------------------------------------------------------------- bad inputs


def test_missing_val_split_names_path(fresh_dataset):
    root, splits = fresh_dataset
    shutil.rmtree(root / "val")
    with pytest.raises(DatasetError, match=f"{root / 'val'}.*val_fallback"):
        _iterator(root, "val")
    with pytest.raises(DatasetError, match=str(root / "val")):
        data.check_dataset(root)
    (root / "val").mkdir()  # what prepare leaves for an empty val split
    with pytest.raises(DatasetError, match=f"{root / 'val'}.*neither"):
        _iterator(root, "val")
    # The opt-in fallback reads the train episodes as a stream of its own.
    assert data.check_dataset(root, val_fallback="train") == {}
    _assert_batches_equal(
        _take(_iterator(root, "val", val_fallback="train"), 3), _take(_iterator(root, "train"), 3)
    )


def test_missing_train_split_names_path(fresh_dataset):
    root, _ = fresh_dataset
    shutil.rmtree(root / "train")
    with pytest.raises(DatasetError, match=str(root / "train")):
        _iterator(root, "train", val_fallback="train")


def test_empty_valid_set(fresh_dataset):
    root, _ = fresh_dataset
    with pytest.raises(
        DatasetError, match=f"{root / 'val' / 'episodes.idx'}.*episode_min_tokens=99"
    ):
        _iterator(root, "val", episode_min_tokens=99)


def test_token_map_mismatch(fresh_dataset):
    root, _ = fresh_dataset
    names = list(SEED_SPECIAL_TOKENS)
    swapped = {n: 50257 + i for i, n in enumerate(names)}
    swapped[names[0]], swapped[names[1]] = swapped[names[1]], swapped[names[0]]
    other = Tokenizer(swapped)
    path = root / episodes.TOKENIZER_STATE_FILE
    with pytest.raises(DatasetError, match=f"{path}.*{names[0]}: dataset 50257 vs tokenizer 50258"):
        _iterator(root, tokenizer=other)
    with pytest.raises(DatasetError, match=str(path)):
        data.check_dataset(root, other)
    _take(_iterator(root, tokenizer=Tokenizer()), 1)  # the same map is fine


def test_missing_mask_file(fresh_dataset):
    root, splits = fresh_dataset
    path = episodes.shard_dir(root / "train", 1) / episodes.MASK_FILE
    path.unlink()
    with pytest.raises(DatasetError, match=f"{path}: missing but use_loss_mask"):
        _iterator(root)
    with pytest.raises(DatasetError, match=str(path)):
        data.check_dataset(root)
    # Opting out reproduces the upstream's unmasked loss: every position counts.
    ref = UpstreamLoader(
        splits["train"],
        batch_size=BATCH,
        block_size=BLOCK,
        seed=SEED,
        min_tokens=MIN_TOKENS,
        use_loss_mask=False,
    )
    _assert_batches_equal(
        _take(_iterator(root, use_loss_mask=False), 6), [ref.get_batch() for _ in range(6)]
    )


def test_stray_top_level_shard_is_ignored_with_warning(fresh_dataset, caplog):
    root, splits = fresh_dataset
    episodes.write_shard(
        root / "train", [(np.arange(1, 30, dtype=np.uint32), np.ones(29, np.uint8))]
    )
    with caplog.at_level(logging.WARNING):
        ours = _take(_iterator(root), 4)
    assert str(root / "train" / episodes.TOKENS_FILE) in caplog.text
    ref = UpstreamLoader(
        splits["train"], batch_size=BATCH, block_size=BLOCK, seed=SEED, min_tokens=MIN_TOKENS
    )
    _assert_batches_equal(ours, [ref.get_batch() for _ in range(4)])


def test_bad_mode_and_fallback(dataset):
    root, _ = dataset
    with pytest.raises(ValueError, match="batch_sampling_mode"):
        _iterator(root, mode="sequential")
    with pytest.raises(ValueError, match="val_fallback"):
        _iterator(root, "val", val_fallback="test")


# ----------------------------------------------------------------------------- inspect CLI


def test_inspect_cli_writes_npz(dataset, tmp_path, capsys):
    root, _ = dataset
    out = tmp_path / "batches.npz"
    rc = data_inspect.main(
        [
            "inspect",
            "--dataset_dir",
            str(root),
            "--config",
            str(CONFIG_FILE),
            "--num_batches",
            "3",
            "--out",
            str(out),
            "--config.batch_size=4",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert '"truncated_episodes"' in printed and "[[" in printed and "]]" in printed
    with np.load(out) as dumped:
        assert dumped["inputs"].shape == (3, 4, BLOCK) and dumped["inputs"].dtype == np.int32
        assert dumped["targets"].shape == (3, 4, BLOCK)
        assert dumped["loss_mask"].shape == (3, 4, BLOCK)
        expected = _take(_iterator(root, batch_size=4), 3)
        np.testing.assert_array_equal(dumped["targets"], np.stack([b["targets"] for b in expected]))


def test_inspect_cli_errors(dataset, tmp_path, capsys):
    root, _ = dataset
    assert (
        data_inspect.main(
            ["inspect", "--dataset_dir", str(tmp_path / "nope"), "--config", str(CONFIG_FILE)]
        )
        == 1
    )
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert (
        data_inspect.main(
            [
                "inspect",
                "--dataset_dir",
                str(root),
                "--config",
                str(CONFIG_FILE),
                "--config.no_such_field=1",
            ]
        )
        == 1
    )
    assert "no_such_field" in capsys.readouterr().err


def test_render_row_marks_trained_span():
    tok = Tokenizer()
    ids = tok.encode("<myPT_user>Hi</myPT_user><myPT_assistant>OK.</myPT_assistant><myPT_eot>")
    mask = [0] * 4 + [1] * 4  # mask of the upstream state machine: assistant content, close, eot
    seq = ids + [EOT] * 3
    m = mask + [0] * 3
    text = data_inspect.render_row(tok, seq[:-1], seq[1:], m[1:])
    assert text == (
        "<myPT_user>Hi</myPT_user><myPT_assistant>[[OK.</myPT_assistant><myPT_eot>]] <+3 pad>"
    )


def test_prepared_dataset_dump_matches_reference_from_raw_files(tmp_path):
    """prepare -> inspect --out -> the reference fed straight from np.fromfile of the files."""
    import json

    from mypt_jax.data import prepare

    jsonl = tmp_path / "chats.jsonl"
    with jsonl.open("w") as f:
        for i in range(31):
            messages = [
                {"role": "user", "content": f"What is {i} times {i}?" + " Really?" * (i % 5)},
                {"role": "assistant", "content": f"{i * i}." + " Yes." * (i % 3)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    root = tmp_path / "ds"
    prepare.prepare(jsonl, root, val_split=0.2, progress=False)

    def raw_split(split):
        d = root / split
        tokens = np.fromfile(d / "tokens.bin", dtype="<u4")
        mask = np.fromfile(d / "mask.bin", dtype="u1")
        index = np.fromfile(d / "episodes.idx", dtype="<u8").reshape(-1, 2)
        return [[(tokens[s : s + n], mask[s : s + n]) for s, n in index]]

    for split, n_batches in (("train", 9), ("val", 4)):
        out = tmp_path / f"{split}.npz"
        argv = [
            "inspect",
            "--dataset_dir",
            str(root),
            "--config",
            str(CONFIG_FILE),
            "--split",
            split,
            "--num_batches",
            str(n_batches),
            "--out",
            str(out),
            "--config.batch_size=4",
            "--config.block_size=40",
        ]
        assert data_inspect.main(argv) == 0
        ref = UpstreamLoader(
            raw_split(split), batch_size=4, block_size=40, seed=SEED, min_tokens=MIN_TOKENS
        )
        if split == "train":
            assert ref.N == 25  # 31 - int(31 * 0.2): 4 does not divide it, batches straddle
        expected = [ref.get_batch() for _ in range(n_batches)]
        with np.load(out) as dumped:
            for name in ("inputs", "targets", "loss_mask"):
                np.testing.assert_array_equal(dumped[name], np.stack([b[name] for b in expected]))


def test_process_defaults_come_from_jax(dataset):
    root, _ = dataset
    implicit = data.make_iterator(
        root,
        "train",
        batch_size=BATCH,
        block_size=BLOCK,
        epoch_seed=SEED,
        episode_min_tokens=MIN_TOKENS,
    )
    _assert_batches_equal(_take(implicit, 2), _take(_iterator(root), 2))


def test_config_overrides_parse_as_the_fields_types():
    c = data_inspect.load_config("configs/cpu_tiny.py", [
        "--config.length_buckets=(64, 512)", "--config.batch_size=4",
        "--config.learning_rate=1e-3", "--config.use_loss_mask=false"])
    assert c.length_buckets == (64, 512) and c.batch_size == 4
    assert c.learning_rate == 1e-3 and c.use_loss_mask is False
    assert data_inspect.load_config("configs/cpu_tiny.py",
                                    ["--config.length_buckets=512"]).length_buckets == (512,)
    for bad, says in [("--config.length_buckets=(5", "expected a tuple"),
                      ("--config.batch_size=x", "expected an integer"),
                      ("--config.use_loss_mask=maybe", "expected true/false"),
                      ("--config.no_such_field=1", "expected --config.<field>=<value>")]:
        with pytest.raises(ValueError, match=re.escape(bad) + ".*" + says):
            data_inspect.load_config("configs/cpu_tiny.py", [bad])
