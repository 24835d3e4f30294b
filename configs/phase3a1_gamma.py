"""Phase 3a-1 gamma: gibberish copy, from the beta run."""

from configs import phase3a1_alpha


def get_config():
    c = phase3a1_alpha.get_config()
    c.dataset_dir = "data/sft_ready/phase3a1_gamma"
    c.init_from = "runs/phase3a1_beta"
    c.learning_rate = 5e-5
    c.max_iters = 2500
    c.warmup_iters = 100
    c.epoch_seed = 4503
    c.log_file = "logs/train/phase3a1_gamma.jsonl"
    c.workdir = "runs/phase3a1_gamma"
    return c
