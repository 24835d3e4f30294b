import re

import jax
import numpy as np
import pytest
import train_helpers

from mypt_jax.data import loader as data
from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training.checkpoint import manager as checkpoint
from mypt_jax.training.checkpoint import run_state
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts

CFG = ModelConfig(block_size=16, vocab_size=50304, n_embd=16, n_head=2, n_layer=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return train_helpers.make_dataset(tmp_path_factory.mktemp("ckpt"))


def _state():
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx, _ = optim.make_optimizer(learning_rate=1e-3, max_iters=10, warmup_iters=0)
    _, params = ts.init_model(CFG, mesh, seed=3)
    return ts.init_state(params, tx, CFG, mesh), tx, mesh


def _meta(step: int, triggers=("eval",), val_loss: float | None = None, val: int = 0) -> dict:
    """A checkpoint's JSON record as the trainer writes it (RunState.to_meta)."""
    run = RunState(step=step, val_position=val)
    if val_loss is not None:
        run.record_eval(step, val_loss, {})
        run.last_eval = {"iter": step, "val_loss": val_loss}
    return run.to_meta(list(triggers))


def test_round_trip_with_data_positions_and_meta(dataset, tmp_path):
    state, tx, mesh = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=2, keep_best=1, async_save=True)
    ck.save(3, state, meta=_meta(3, ["interval"], 1.5, val=7))
    ck.poll(wait=True)
    (timing,) = ck.timings
    assert timing["step"] == 3 and timing["total_s"] >= timing["blocking_s"] >= 0
    assert timing["trigger"] == "interval"
    restored, train_state, val_state, meta = ck.restore(3, ts.abstract_state(tx, CFG, mesh))
    ck.close()
    assert train_state == {"next_index": 3} and val_state == {"next_index": 7}
    assert meta == _meta(3, ["interval"], 1.5, val=7) and set(meta) == set(run_state.META_KEYS)
    back = RunState.from_meta(meta)
    assert (back.step, back.train_position, back.val_position, back.val_history) == (
        3, 3, 7, [(3, 1.5)])
    assert back.evaluated_at(3) and back.to_meta(["interval"]) == meta
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
    assert (train_state, val_state) == ({"next_index": 3}, {"next_index": 1})
    assert meta == {"step": 3, "data_position": {"train": 3, "val": 1}}
    assert RunState.from_meta(meta).train_position == 3


def test_keeps_latest_n_and_the_best(tmp_path):
    state, _, _ = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=2, keep_best=1)
    for step, val in [(0, 5.0), (10, 2.0), (20, 4.0), (30, None), (40, 3.0)]:
        ck.save(step, state, meta=_meta(step, ["eval"], val))
    ck.wait()
    assert sorted(ck.all_steps()) == [10, 30, 40]
    ck.close()


def test_temporary_saves_go_once_a_newer_commits_and_interval_saves_stay(tmp_path):
    """time: removed by the next save; interval: kept whatever keep says; best ranks the
    saves made anyway, a temporary one included; the rules hold after a restart, read from
    the saves' own records."""
    state, _, _ = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=1)
    for step, triggers, val in [(5, ["time"], None), (10, ["interval"], None),
                                (15, ["time", "best"], 1.0), (20, ["time"], None),
                                (25, ["eval"], 3.0)]:
        ck.save(step, state, meta=_meta(step, triggers, val))
        ck.wait()
    # 5 and 20 went (temporary, newer saves committed); 15 stays as the best val loss.
    assert sorted(ck.all_steps()) == [10, 15, 25]
    ck.close()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=0)  # a fresh process
    ck.save(30, state, meta=_meta(30, ["time"]))
    ck.wait()
    assert sorted(ck.all_steps()) == [10, 25, 30]  # keep=1 counts 25; 30 is the newest
    ck.save(35, state, meta=_meta(35, ["preempt"]))
    ck.wait()
    assert sorted(ck.all_steps()) == [10, 35]
    ck.close()


def test_checkpoints_without_triggers_count_as_eval_saves(tmp_path):
    """Written before triggers were recorded: kept by keep, ranked by their val loss."""
    state, _, _ = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=1)
    for step, val in [(10, 1.0), (20, 2.0)]:
        meta = _meta(step, ["eval"], val)
        del meta["trigger"], meta["triggers"], meta["best"]
        ck.save(step, state, meta=meta)
        ck.wait()
    ck.close()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=1)
    ck.save(30, state, meta=_meta(30, ["time"]))
    ck.wait()
    assert sorted(ck.all_steps()) == [10, 20, 30]  # 10: best; 20: the newest lasting one
    ck.close()


def test_params_only_restore(tmp_path):
    state, _, mesh = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=1, keep_best=0)
    ck.save(5, state, meta=_meta(5))
    ck.close()
    params, step = checkpoint.restore_params(tmp_path, ts.abstract_params(CFG, mesh))
    assert step == 5
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(state.params))


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_last_good_checkpoint(dataset, tmp_path):
    from mypt_jax.training import trainer

    c = train_helpers.tiny_config(dataset, tmp_path / "run", learning_rate=1e9, grad_clip=0.0,
                                  warmup_iters=0, max_iters=30, eval_interval=4,
                                  checkpoint_at_eval=True, eval_prompts_file="", n_layer=1)
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
