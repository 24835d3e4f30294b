"""The dc62a0c loop's pieces, each against numbers worked out by hand: where its training
stream stands, its loss over microbatches, its draws, and its saturation flags."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers
from ml_collections import config_dict

from mypt_jax.data import loader as data
from mypt_jax.training.evals import saturation
from mypt_jax.training.setup import semantics
from mypt_jax.training.step.train_step import microbatch_weights


def _c(**kw):
    c = config_dict.ConfigDict(dict(upstream_semantics="dc62a0c", grad_accum_steps=3,
                                    batch_size=6, eval_interval=4, eval_iters=2, max_iters=9,
                                    use_loss_mask=True, token_accuracy=False,
                                    saturation_check=False))
    c.update(kw)
    return c


def test_train_positions_count_the_evals_draws():
    at = semantics.train_positions(_c(), start=0, position=0, eval_pending=True)
    # eval 0 draws 2, each update 3; evals at 4 and 8 draw 2 more each.
    assert [at(u) for u in range(9)] == [2, 5, 8, 11, 16, 19, 22, 25, 30]
    # Resumed at step 4 from draw 14: the eval of step 4 still to run draws first, or not.
    assert semantics.train_positions(_c(), 4, 14, eval_pending=True)(5) == 14 + 2 + 3
    assert semantics.train_positions(_c(), 4, 14, eval_pending=False)(5) == 14 + 3
    ours = semantics.train_positions(_c(upstream_semantics="24cc3fc"), 0, 0, True)
    assert [ours(u) for u in range(5)] == [0, 1, 2, 3, 4]  # one global batch per update
    assert semantics.val_positions(_c()) == [0, 4, 8, 12]  # 2 x eval_iters per eval


def test_microbatch_weights_make_the_mean_of_microbatch_means():
    mask_BxT = np.array([[1, 1, 0], [1, 0, 0],  # microbatch 0: 3 targets
                         [2, 0, 0], [0, 0, 0],  # microbatch 1: weight 2
                         [0, 0, 0], [0, 0, 0]], np.float32)  # microbatch 2: none (clamped)
    ce_BxT = np.arange(18, dtype=np.float32).reshape(6, 3)
    w_BxT = np.asarray(microbatch_weights(jnp.asarray(mask_BxT), 3))
    means = [(0 + 1 + 3) / 3, 6 * 2 / 2, 0.0]
    np.testing.assert_allclose((w_BxT * ce_BxT).sum(), sum(means) / 3, rtol=1e-6)


def test_draws_of_microbatches_are_the_upstreams(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path, n=20)
    kw = dict(batch_size=6, block_size=32, epoch_seed=5, process_index=0, process_count=1)
    n = len(data.make_source(dataset, "train", **kw).split)
    epoch = data.make_source(dataset, "train", **kw, draw_rows=2)
    stream = np.concatenate([np.random.RandomState(5 + e).permutation(n) for e in range(3)])
    np.testing.assert_array_equal(epoch.global_episode_ids(3), stream[6:12])
    random = data.make_source(dataset, "train", mode="random", **kw, draw_rows=2)
    rng = np.random.RandomState(5)
    draws = [rng.randint(0, n, size=2) for _ in range(4)]  # one upstream get_batch each
    np.testing.assert_array_equal(random.global_episode_ids(1), np.concatenate(draws[1:4]))


@pytest.mark.parametrize("history, found", [
    ([[0, 0.50, 0.40], [10, 0.501, 0.401]], ["plateau"]),
    ([[0, 0.50, 0.40], [10, 0.60, 0.401]], ["memorization_shift", "gap_widening"]),
    ([[0, 0.50, 0.40], [10, 0.60, 0.50]], []),
    ([[0, 0.50, 0.40], [4, 0.501, 0.401]], []),  # before saturation_min_steps
])
def test_saturation_flags(history, found):
    c = config_dict.ConfigDict(dict(saturation_window=2, saturation_min_steps=5,
                                    saturation_min_delta=0.002, saturation_gap_threshold=0.01))
    assert [r.split()[0] for r in saturation.reasons(c, history)] == found


def test_our_accuracy_reads_its_own_batches_and_dc62a0c_the_runs():
    from mypt_jax.training.checkpoint.run_state import RunState
    from mypt_jax.training.evals.accuracy import AccuracyPass

    ours, state = AccuracyPass(_c(upstream_semantics="24cc3fc", token_accuracy=True),
                               None), RunState()
    assert ours.positions(state, step=4, val_start=6) == (0, 6)  # the val loss's own window
    assert (state.train_position_at(4), state.accuracy_position) == (4, 2)  # stream untouched
    newer, state = AccuracyPass(_c(), None), RunState(train_per_step=3)
    assert newer.positions(state, step=4, val_start=6) == (12, 8)  # after the val loss's 2
    assert state.train_position_at(4) == 14  # training resumes after the 2 drawn
