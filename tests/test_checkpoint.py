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


def test_round_trip_with_iterator_state_and_meta(dataset, tmp_path):
    state, tx, mesh = _state()
    it = data.make_iterator(dataset, "train", batch_size=4, block_size=16, epoch_seed=1,
                            process_index=0, process_count=1)
    for _ in range(3):
        next(it)
    ck = checkpoint.Checkpointer(tmp_path, keep=2, keep_best=1)
    ck.save(3, state, train_data=it.get_state(), val_data={"next_index": 7},
            meta={"step": 3, "note": "x"}, val_loss=1.5)
    expected_next = next(it)  # the save holds a snapshot, not the live iterator
    ck.wait()
    restored, train_state, val_state, meta = ck.restore(3, ts.abstract_state(tx, CFG, mesh))
    ck.close()
    assert meta == {"step": 3, "note": "x"} and val_state == {"next_index": 7}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state, restored)
    fresh = data.make_iterator(dataset, "train", batch_size=4, block_size=16, epoch_seed=1,
                               process_index=0, process_count=1)
    fresh.set_state(train_state)
    got = next(fresh)
    for k in expected_next:
        np.testing.assert_array_equal(got[k], expected_next[k])


def test_keeps_latest_n_and_the_best(tmp_path):
    state, _, _ = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=2, keep_best=1)
    for step, val in [(0, 5.0), (10, 2.0), (20, 4.0), (30, None), (40, 3.0)]:
        ck.save(step, state, train_data={}, val_data={}, meta={}, val_loss=val)
    ck.wait()
    assert sorted(ck.all_steps()) == [10, 30, 40]
    ck.close()


def test_params_only_restore(tmp_path):
    state, _, mesh = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=0)
    ck.save(5, state, train_data={}, val_data={}, meta={})
    ck.close()
    params, step = checkpoint.restore_params(tmp_path, ts.abstract_params(CFG, mesh))
    assert step == 5
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(state.params))


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
