"""Phase 3a-1 alpha: format lock (the upstream 750M_phase3a1_alpha.json)."""

from configs import base


def get_config():
    c = base.get_config()
    c.dataset_dir = "data/sft_ready/phase3a1_alpha"
    c.init_from = "checkpoints/domain_v5_sft_ready"  # the converted base model (upstream dir or ours)
    c.learning_rate = 7e-5
    c.max_iters = 3500
    c.warmup_iters = 150
    c.epoch_seed = 4501
    c.episode_min_tokens = 10
    c.weight_decay = 0.05
    c.eval_prompts_file = "configs/sft_eval/phase3a1_eval_prompts.json"
    c.log_file = "logs/train/phase3a1_alpha.jsonl"
    c.workdir = "runs/phase3a1_alpha"
    return c
