"""Only proven damage moves a checkpoint: a config change, a passing storage fault or an
out-of-memory read leave every checkpoint where it is."""

from __future__ import annotations

import errno
import shutil

import jax
import numpy as np
import optax
import pytest
import train_helpers

from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training import exit_codes, trainer
from mypt_jax.training.checkpoint import manager as checkpoint
from mypt_jax.training.checkpoint import read_faults, state_tree
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts

CFG = ModelConfig(block_size=16, vocab_size=50304, n_embd=16, n_head=2, n_layer=1)
OVERRIDES = {"max_iters": 10, "checkpoint_interval": 5, "eval_interval": 5, "eval_iters": 1,
             "log_interval": 5, "eval_prompts_file": "", "warmup_iters": 0, "n_layer": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained to step 10 with grad_clip 1 (checkpoints 5 and 10)."""
    tmp = tmp_path_factory.mktemp("faults")
    dataset = train_helpers.make_dataset(tmp)
    trainer.train(train_helpers.tiny_config(dataset, tmp / "run", **OVERRIDES))
    return dataset, tmp / "run"


def _steps(workdir) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.is_dir())


def test_grad_clip_one_to_zero_on_resume_continues_with_every_checkpoint_in_place(
        trained, tmp_path):
    dataset, base = trained
    run = tmp_path / "run"
    shutil.copytree(base, run)
    summary = trainer.train(train_helpers.tiny_config(
        dataset, run, **{**OVERRIDES, "max_iters": 15, "grad_clip": 0.0}))
    assert summary["resumed_from"] == 10
    start = [r for r in train_helpers.read_log(run / "log.jsonl") if r.get("event") == "start"]
    assert "resume: config changed grad_clip: 1.0 -> 0.0" in start[-1]["notes"]
    assert _steps(run) == ["10", "15", "5"]  # nothing moved aside


def _legacy_unclipped_tx():
    """The optimizer chain as written before the clip was always in it, with grad_clip 0."""
    spec = optim.optimizer_spec_of(learning_rate=1e-3, max_iters=10, warmup_iters=0,
                                   weight_decay=0.1)
    return optax.chain(optax.adamw(optim.schedule_from(spec.hyper.values), b1=0.9, b2=0.95,
                                   eps=1e-8, weight_decay=0.1, mask=optim.decay_mask))


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_a_checkpoint_without_the_clip_slot_resumes(tmp_path, grad_clip):
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, params = ts.init_model(CFG, mesh, seed=3)
    legacy = ts.init_state(params, _legacy_unclipped_tx(), CFG, mesh)
    ck = checkpoint.Checkpointer(tmp_path)
    ck.save(2, legacy, meta=RunState(step=2).to_meta(["interval"]))
    ck.wait()
    tx, _ = optim.make_optimizer(learning_rate=1e-3, max_iters=10, warmup_iters=0,
                                 weight_decay=0.1, grad_clip=grad_clip)
    abstract = ts.abstract_state(tx, CFG, mesh)
    restored = ck.restore_newest(abstract)
    ck.close()
    assert jax.tree.structure(restored.state) == jax.tree.structure(abstract)
    assert isinstance(restored.state.opt_state[0], optim.ClipState)
    jax.tree.map(np.testing.assert_array_equal, legacy.opt_state[0],
                 restored.state.opt_state[1])


def test_a_tree_it_cannot_read_is_refused_and_nothing_moves(tmp_path):
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, params = ts.init_model(CFG, mesh, seed=3)
    tx, _ = optim.make_optimizer(learning_rate=1e-3, max_iters=10, warmup_iters=0)
    ck = checkpoint.Checkpointer(tmp_path)
    for step in (1, 2):
        ck.save(step, ts.init_state(params, tx, CFG, mesh), meta=RunState(step=step).to_meta([]))
    ck.wait()
    other = optax.chain(tx, optax.scale_by_schedule(lambda n: 1.0))  # one more state leaf
    with pytest.raises(state_tree.TreeMismatch, match=r"only in the checkpoint:|missing in the"):
        ck.restore_newest(ts.abstract_state(other, CFG, mesh))
    ck.close()
    assert _steps(tmp_path) == ["1", "2"]


# What tensorstore, orbax and json said for the damage tests/test_resume_safety.py makes, and
# for faults that are not damage.
@pytest.mark.parametrize(("exc", "kind"), [
    (ValueError('OUT_OF_RANGE: Error reading "params.wpe/0.0" in OCDBT database: Requested '
                "byte range [11924111, 11939289) is not valid for value of size 100"), "damage"),
    (ValueError('FAILED_PRECONDITION: Error reading "params.wpe/0.0" in OCDBT database: '
                "ZSTD_decompressStream() failed: Unknown frame descriptor"), "damage"),
    (ValueError('Item "state" was not found in the checkpoint. Available items: [meta]'),
     "damage"),
    (__import__("json").JSONDecodeError("Expecting value", "{", 1), "damage"),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), "transient"),
    (ValueError("UNAVAILABLE: HTTP response code: 503"), "transient"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 3221225472 bytes"), "other"),
    (PermissionError(errno.EACCES, "Permission denied"), "other"),
    (RuntimeError("something nobody has seen"), "other"),
])
def test_only_decode_failures_count_as_damage(exc, kind):
    assert read_faults.classify(exc) == kind


def test_a_passing_fault_is_retried(monkeypatch):
    monkeypatch.setattr(read_faults, "RETRY_DELAYS_S", (0.0, 0.0))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.ECONNRESET, "Connection reset by peer")
        return "read"

    assert read_faults.attempt(flaky) == ("read", None)
    assert len(calls) == 3


@pytest.mark.parametrize(("error", "code", "says"), [
    (OSError(errno.ETIMEDOUT, "Connection timed out"), 74, "could not be read after 2 retries"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory"), 4, "this is not damage"),
])
def test_a_read_that_fails_without_damage_moves_nothing(tmp_path, monkeypatch, error, code, says):
    monkeypatch.setattr(read_faults, "RETRY_DELAYS_S", (0.0, 0.0))
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, params = ts.init_model(CFG, mesh, seed=3)
    tx, _ = optim.make_optimizer(learning_rate=1e-3, max_iters=10, warmup_iters=0)
    ck = checkpoint.Checkpointer(tmp_path)
    ck.save(4, ts.init_state(params, tx, CFG, mesh), meta=RunState(step=4).to_meta([]))
    ck.wait()

    def failing(*args):
        raise error

    monkeypatch.setattr(checkpoint.Checkpointer, "restore", failing)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        ck.restore_newest(ts.abstract_state(tx, CFG, mesh))
    ck.close()
    assert _steps(tmp_path) == ["4"]
    exit_code, line = exit_codes.user_error(caught.value)
    assert exit_code == code and says in line and "nothing was moved" in line, line
