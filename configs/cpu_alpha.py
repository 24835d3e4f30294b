"""Phase 3a-1 alpha on two CPU cores from scratch: learns the format lock in a few minutes.

    python -m datagen.format_lock --mode minimal --math exclude --output_dir data/sft_format_lock_alpha
    python -m mypt_jax.prepare --input data/sft_format_lock_alpha/mypt_format_lock_v1.jsonl \
        --output_dir data/sft_ready/phase3a1_alpha --val_split 0.1
    python -m mypt_jax.train --config=configs/cpu_alpha.py

(the seed doc's Step 1 and Step 2 commands, then a tiny model trained from scratch).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.n_layer = 2
    c.n_embd = 128
    c.n_head = 4
    c.block_size = 40  # alpha episodes are 28-34 tokens; prompt + 8 new tokens fit
    c.dropout = 0.0
    c.precision = "fp32"  # bf16 matmuls are emulated (slow) on CPU
    c.dataset_dir = "data/sft_ready/phase3a1_alpha"
    c.batch_size = 16
    c.learning_rate = 2e-3
    c.lr_schedule = "cosine"
    c.min_lr = 1e-4
    c.max_iters = 400
    c.warmup_iters = 30
    c.weight_decay = 0.05
    c.epoch_seed = 4501
    c.eval_interval = 100
    c.eval_iters = 3  # the val split holds ~40 episodes
    c.eval_max_new_tokens = 8
    c.eval_prompts_file = "configs/sft_eval/phase3a1_alpha_test_prompts.json"
    c.simple_prompts_after = 400
    c.log_interval = 25
    c.workdir = "runs/cpu_alpha"
    return c
