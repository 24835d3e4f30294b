import re

import jax
import numpy as np
import pytest
import train_helpers

from mypt_jax.data import loader as data
from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training import checkpoint, optim
from mypt_jax.training import step as ts

CFG = ModelConfig(block_size=16, vocab_size=50304, n_embd=16, n_head=2, n_layer=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return train_helpers.make_dataset(tmp_path_factory.mktemp("ckpt"))


def _state():
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx, _ = optim.make_optimizer(learning_rate=1e-3, max_iters=10, warmup_iters=0)
    _, params = ts.init_model(CFG, mesh, seed=3)
    return ts.init_state(params, tx, CFG, mesh), tx, mesh


def test_round_trip_with_data_positions_and_meta(dataset, tmp_path):
    state, tx, mesh = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=2, keep_best=1, async_save=True)
    ck.save(3, state, data_position={"train": 3, "val": 7}, meta={"step": 3, "note": "x"},
            val_loss=1.5)
    ck.poll(wait=True)
    (timing,) = ck.timings
    assert timing["step"] == 3 and timing["total_s"] >= timing["blocking_s"] >= 0
    restored, train_state, val_state, meta = ck.restore(3, ts.abstract_state(tx, CFG, mesh))
    ck.close()
    assert train_state == {"next_index": 3} and val_state == {"next_index": 7}
    assert meta == {"step": 3, "note": "x", "data_position": {"train": 3, "val": 7}}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state, restored)
    # No per-process iterator files: the positions are global and live in the JSON record.
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "3").iterdir() if p.is_dir()) == [
        "meta", "state"]


def test_checkpoints_with_grain_iterator_files_still_restore(dataset, tmp_path):
    """Checkpoints written before the positions moved into the JSON record."""
    import grain
    import orbax.checkpoint as ocp

    state, tx, mesh = _state()
    it = data.make_iterator(dataset, "train", batch_size=4, block_size=16, epoch_seed=1,
                            process_index=0, process_count=1)
    for _ in range(3):
        next(it)
    val = data.make_iterator(dataset, "val", batch_size=4, block_size=16, epoch_seed=1,
                             process_index=0, process_count=1)
    next(val)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "train_data": grain.checkpoint.CheckpointHandler(),
                "val_data": grain.checkpoint.CheckpointHandler()}
    with ocp.CheckpointManager(tmp_path / "checkpoints", item_names=tuple(handlers),
                               item_handlers=handlers) as mngr:
        mngr.save(3, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": 3}),
            train_data=grain.checkpoint.CheckpointSave(it),
            val_data=grain.checkpoint.CheckpointSave(val)))
    ck = checkpoint.Checkpointer(tmp_path)
    restored, train_state, val_state, meta = ck.restore(3, ts.abstract_state(tx, CFG, mesh))
    ck.close()
    assert (train_state, val_state, meta) == ({"next_index": 3}, {"next_index": 1}, {"step": 3})


def test_keeps_latest_n_and_the_best(tmp_path):
    state, _, _ = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=2, keep_best=1)
    for step, val in [(0, 5.0), (10, 2.0), (20, 4.0), (30, None), (40, 3.0)]:
        ck.save(step, state, data_position={"train": 0, "val": 0}, meta={}, val_loss=val)
    ck.wait()
    assert sorted(ck.all_steps()) == [10, 30, 40]
    ck.close()


def test_params_only_restore(tmp_path):
    state, _, mesh = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=0)
    ck.save(5, state, data_position={"train": 0, "val": 0}, meta={})
    ck.close()
    params, step = checkpoint.restore_params(tmp_path, ts.abstract_params(CFG, mesh))
    assert step == 5
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(state.params))


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_last_good_checkpoint(dataset, tmp_path):
    from mypt_jax.training import trainer

    c = train_helpers.tiny_config(dataset, tmp_path / "run", learning_rate=1e9, grad_clip=0.0,
                                  warmup_iters=0, max_iters=30, eval_interval=4,
                                  eval_prompts_file="", n_layer=1)
    with pytest.raises(FloatingPointError) as err:
        trainer.train(c)
    m = re.search(r"loss is (nan|inf|-inf) at step (\d+); last good checkpoint: step (\d+) at "
                  r"(\S+)", str(err.value))
    assert m, str(err.value)
    bad_step, good_step = int(m.group(2)), int(m.group(3))
    assert good_step <= bad_step and good_step % 4 == 0
    assert m.group(4).endswith(f"checkpoints/{good_step}")
    # the named checkpoint is complete and finite
    params = train_helpers.final_params(tmp_path / "run", good_step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    log = train_helpers.read_log(tmp_path / "run" / "log.jsonl")
    assert "error" in log[-1] and "last_good_checkpoint" in log[-1]
