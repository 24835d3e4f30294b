"""The four Phase 3a phases shrunk for two CPU cores: `python -m mypt_jax.pipeline --preset cpu`.

    get_config("3a1_beta")   # or --config=configs/pipeline_cpu.py:3a1_beta

Alpha is `configs/cpu_alpha.py` (a 2-layer, 128-wide model trained from scratch) with the
block widened to 64 so that every later phase, initialised from the one before, keeps the
same learned position table: beta and gamma echo episodes run up to ~80 tokens, and
an episode longer than block_size + 1 keeps only its last block_size + 1 tokens (the
loader's rule; about 1% of gamma). The pipeline sets dataset_dir, workdir and init_from.
"""

from configs import cpu_alpha

PHASES = ("3a1_alpha", "3a1_beta", "3a1_gamma", "3a2")


def get_config(phase: str = "3a1_alpha"):
    if phase not in PHASES:
        raise ValueError(f"pipeline_cpu: unknown phase {phase!r}; expected one of {PHASES}")
    c = cpu_alpha.get_config()
    c.block_size = 64  # one position table for all phases (see the docstring)
    c.init_from = ""  # from scratch; the pipeline points later phases at the previous run
    c.eval_max_new_tokens = 16  # the longest test answer (gamma's copy) is ~8 tokens
    c.tensorboard = False
    c.workdir = f"runs/cpu/phase{phase}"
    c.dataset_dir = f"data/sft_ready/phase{phase}"
    c.eval_prompts_file = f"configs/sft_eval/phase{phase}_test_prompts.json"
    if phase == "3a1_alpha":
        return c
    # Later phases: a lower, constant-then-cosine rate that
    # continues from the previous phase instead of starting over.
    c.learning_rate = 1e-3
    c.min_lr = 1e-4
    c.warmup_iters = 20
    c.max_iters = 300
    c.eval_interval = 100
    c.simple_prompts_after = 300
    c.epoch_seed = {"3a1_beta": 4502, "3a1_gamma": 4503, "3a2": 4504}[phase]
    return c
