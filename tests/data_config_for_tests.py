"""A tiny loader config for tests/test_data.py (the flat upstream-named loader fields)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.batch_size = 8  # global rows per batch
    config.block_size = 16  # tokens per row; episodes keep their last block_size + 1
    config.epoch_seed = 7  # epoch e shuffles with RandomState(epoch_seed + e)
    config.batch_sampling_mode = "epoch"  # "epoch" | "random"
    config.episode_min_tokens = 5  # shorter episodes are never sampled
    config.epoch_shuffle = True  # False: file order every epoch
    config.use_loss_mask = True  # False: train on every position, padding included
    return config
