"""Phase 3a-2: knowledge (format lock with math, echo replay), from the gamma run."""

from configs import phase3a1_alpha


def get_config():
    c = phase3a1_alpha.get_config()
    c.dataset_dir = "data/sft_ready/phase3a2"
    c.init_from = "runs/phase3a1_gamma"
    c.learning_rate = 3e-5
    c.max_iters = 4000
    c.warmup_iters = 150
    c.epoch_seed = 4504
    c.log_file = "logs/train/phase3a2.jsonl"
    c.workdir = "runs/phase3a2"
    return c
