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
    # The preflight's choices for the 750M step (launch/README.md): weights and AdamW state
    # split over every device (FSDP), the batch over the same axis; and remat "dots", which
    # keeps the weight matmuls' outputs and recomputes the rest, the same function with a
    # third of the temporaries and half the HBM traffic of no remat.
    c.mesh_data = 1
    c.mesh_fsdp = -1
    c.remat = "dots"
    c.log_file = "logs/train/phase3a1_alpha.jsonl"
    c.workdir = "runs/phase3a1_alpha"
    return c
