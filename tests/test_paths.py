"""Remote (`gs://`) paths for workdir, init_from, log_file and model dirs, on a fake bucket.

`FakeGCS` is fsspec's in-memory filesystem answering to `gs://`, so etils.epath (which the
code uses for every such path) reads and writes it without network. Orbax itself writes
`gs://` through tensorstore's own GCS driver, which this cannot fake: checkpoints are covered
by the path arithmetic here and by the local train/resume tests.
"""

from __future__ import annotations

import json
import sys
import time

import ml_dtypes
import numpy as np
import pytest
import train_helpers
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from mypt_jax.data import paths
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.interop import model_io, upstream
from mypt_jax.model import ModelConfig, param_shapes
from mypt_jax.training.checkpoint import manager as checkpoint
from mypt_jax.training.checkpoint import run_meta
from mypt_jax.training.observe import metrics
from mypt_jax.training.setup import config

TINY = ModelConfig(block_size=16, vocab_size=50304, n_embd=16, n_head=2, n_layer=2,
                   param_dtype="bfloat16")


class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # etils passes this for gs
        super().__init__(*args, **kwargs)


@pytest.fixture
def bucket(monkeypatch):
    registry = sys.modules["fsspec.registry"]._registry
    monkeypatch.setitem(registry, "gs", FakeGCS)
    monkeypatch.setitem(registry, "gcs", FakeGCS)
    monkeypatch.setattr(FakeGCS, "store", {})
    monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
    FakeGCS.clear_instance_cache()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    yield FakeGCS.store
    FakeGCS.clear_instance_cache()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def fill(shapes: dict) -> dict:
        return {k: fill(v) if isinstance(v, dict) else
                rng.standard_normal(v).astype(ml_dtypes.bfloat16) for k, v in shapes.items()}

    return fill(param_shapes(TINY))


def test_uris_survive_path_helpers(tmp_path, monkeypatch):
    assert str(checkpoint.checkpoint_dir("gs://bucket/run")) == "gs://bucket/run/checkpoints"
    assert str(paths.absolute("gs://bucket/run/checkpoints")) == "gs://bucket/run/checkpoints"
    assert paths.describe_path("gs://bucket/run") == "gs://bucket/run"
    # Local paths: relative stays relative for display, absolute for orbax.
    monkeypatch.chdir(tmp_path)
    assert str(checkpoint.checkpoint_dir("run")) == "run/checkpoints"
    assert str(paths.absolute("run/checkpoints")) == str(tmp_path / "run" / "checkpoints")
    assert paths.describe_path("run") == str((tmp_path / "run").resolve())


def test_resolve_keeps_a_remote_workdir_and_refuses_a_remote_dataset(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    c = train_helpers.tiny_config(dataset, "gs://bucket/runs/a", log_file="")
    r = config.resolve(c, num_devices=1, process_count=1)
    assert r.config.workdir == "gs://bucket/runs/a"
    assert r.config.log_file == "gs://bucket/runs/a/log.jsonl"
    c = train_helpers.tiny_config("gs://bucket/data", tmp_path / "run")
    with pytest.raises(config.ConfigError, match=r"^dataset_dir: gs://bucket/data is remote.*copy it"):
        config.resolve(c, num_devices=1, process_count=1)


def test_model_dir_on_a_bucket_is_an_init_source(bucket):
    params = _params()
    out = model_io.save_model("gs://bucket/m", params, TINY, Tokenizer(), source={"x": 1})
    assert str(out) == "gs://bucket/m"
    keys = sorted(bucket)
    assert "gs://bucket/m/config.json" in keys and any("/m/params/" in k for k in keys)
    assert not any(".tmp-" in k for k in keys)
    assert model_io.is_model_checkpoint("gs://bucket/m")
    assert model_io.read_config("gs://bucket/m") == TINY
    assert model_io.read_tokenizer("gs://bucket/m") == Tokenizer()
    assert model_io.read_source("gs://bucket/m") == {"x": 1}
    init = config.describe_init("gs://bucket/m")
    assert (init.kind, str(init.path), init.model_config) == ("model", "gs://bucket/m", TINY)
    assert init.tokenizer == Tokenizer()
    with pytest.raises(model_io.ModelCheckpointError, match="already exists"):
        model_io.save_model("gs://bucket/m", params, TINY, Tokenizer())


def test_failed_remote_save_leaves_nothing(bucket):
    bad = _params()
    bad["wte"] = bad["wte"].astype(np.float32)  # dtype mismatch: refused before writing
    with pytest.raises(model_io.ModelCheckpointError, match="param_dtype"):
        model_io.save_model("gs://bucket/m", bad, TINY, Tokenizer())
    assert not bucket
    with pytest.raises(RuntimeError, match="boom"), model_io.staged_dir("gs://bucket/s") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert not bucket


def test_upstream_export_and_read_through_a_bucket(bucket):
    cfg = TINY.replace(param_dtype="float32")
    params = _as_f32(_params(1))
    upstream.write_upstream("gs://bucket/up", params, cfg, Tokenizer(), dtype="fp32")
    assert "gs://bucket/up/model.pt" in bucket
    assert upstream.is_upstream_checkpoint("gs://bucket/up")
    assert config.describe_init("gs://bucket/up").kind == "upstream"
    ckpt = upstream.read_upstream("gs://bucket/up")
    assert ckpt.source["path"] == "gs://bucket/up"
    _assert_equal(ckpt.params, params)


def _as_f32(tree):
    return {k: _as_f32(v) if isinstance(v, dict) else v.astype(np.float32) for k, v in tree.items()}


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(np.asarray(a[k]), b[k])


def test_latest_run_meta_on_a_bucket_needs_the_commit_marker(bucket):
    from etils import epath

    ckpts = epath.Path("gs://bucket/run/checkpoints")
    for step, committed in ((2, True), (4, False)):  # 4: orbax still writing it
        (ckpts / str(step) / "meta").mkdir(parents=True)
        (ckpts / str(step) / "meta" / "metadata").write_text(json.dumps({"step": step}))
        if committed:
            (ckpts / str(step) / paths.COMMIT_MARKER).write_text("")
    assert run_meta.latest_run_meta("gs://bucket/run") == {"step": 2}


def _uploaded(log, iters: list[int], timeout_s: float = 10.0) -> bool:
    """Whether the remote log shows `iters` within the timeout (uploads run in a thread)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if [json.loads(x)["iter"] for x in log.read_text().splitlines()] == iters:
            return True
        time.sleep(0.02)
    return False


def test_remote_log_appends_to_the_existing_one_and_uploads(bucket, monkeypatch):
    from etils import epath

    log = epath.Path("gs://bucket/run/log.jsonl")
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"iter": 0, "event": "start"}) + "\n")  # a resumed run's log
    monkeypatch.setattr(metrics.sys.stderr, "isatty", lambda: False)
    w = metrics.MetricsWriter("gs://bucket/run/log.jsonl", "gs://bucket/run/tb", total_steps=4)
    w.write({"iter": 0, "event": "start"})  # events upload at once, in the background
    assert _uploaded(log, [0, 0])
    w.write({"iter": 1, "train_loss": 1.0})  # step lines wait for the interval ...
    time.sleep(0.3)
    assert len(log.read_text().splitlines()) == 2
    w.write({"iter": 2, "val_loss": 0.5})  # ... or the next eval
    assert _uploaded(log, [0, 0, 1, 2])
    w.write({"iter": 3, "train_loss": 0.9})
    w.scalars(3, {"train_loss": 0.9})
    staging = w._staging
    w.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["iter"] for x in lines] == [0, 0, 1, 2, 3] and lines[-1]["train_loss"] == 0.9
    assert any(k.startswith("gs://bucket/run/tb/events.out.tfevents") for k in bucket)
    assert not staging.exists()


def test_local_log_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics.sys.stderr, "isatty", lambda: False)
    w = metrics.MetricsWriter(tmp_path / "sub" / "log.jsonl", None)
    w.write({"iter": 1, "train_loss": 1.0})
    assert w._staging is None
    assert json.loads((tmp_path / "sub" / "log.jsonl").read_text())["iter"] == 1
    w.close()
