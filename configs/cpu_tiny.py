"""A model small enough to train on two CPU cores in seconds: tests and smoke runs."""

from configs import base


def get_config():
    c = base.get_config()
    c.n_layer = 2
    c.n_embd = 64
    c.n_head = 4
    c.block_size = 64
    c.dropout = 0.0
    # fp32 for exact float32 numerics: tests compare runs across device counts and resumes at
    # float32 tolerances. Not for speed: where the CPU has native bf16 (avx512_bf16), bf16
    # matmuls ran faster (benchmarks/README.md).
    c.precision = "fp32"
    c.dataset_dir = "data/sft_ready/phase3a1_alpha"
    c.batch_size = 8
    c.learning_rate = 1e-3
    c.max_iters = 40
    c.warmup_iters = 5
    c.weight_decay = 0.05
    c.eval_interval = 10
    c.eval_iters = 4
    c.eval_max_new_tokens = 8
    c.log_interval = 5
    c.simple_prompts_after = 1_000_000  # too small to answer anything
    c.workdir = "runs/cpu_tiny"
    return c
