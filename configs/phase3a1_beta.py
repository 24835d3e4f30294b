"""Phase 3a-1 beta: echo expansion, from the alpha run."""

from configs import phase3a1_alpha


def get_config():
    c = phase3a1_alpha.get_config()
    c.dataset_dir = "data/sft_ready/phase3a1_beta"
    c.init_from = "runs/phase3a1_alpha"
    c.learning_rate = 5e-5
    c.max_iters = 2500
    c.warmup_iters = 100
    c.epoch_seed = 4502
    c.log_file = "logs/train/phase3a1_beta.jsonl"
    c.workdir = "runs/phase3a1_beta"
    return c
