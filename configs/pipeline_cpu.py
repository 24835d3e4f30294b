"""The four Phase 3a phases shrunk for two CPU cores: `python -m mypt_jax.pipeline --preset cpu`.

    get_config("3a1_beta")   # or --config=configs/pipeline_cpu.py:3a1_beta

Alpha is `configs/cpu_alpha.py` (a 2-layer, 128-wide model trained from scratch) with the
block widened to 64 so that every later phase, initialised from the one before, keeps the
same learned position table: beta and gamma echo episodes run up to ~80 tokens, and
an episode longer than block_size + 1 keeps only its last block_size + 1 tokens (the
loader's rule; about 1% of gamma). The pipeline sets dataset_dir, workdir and init_from.

Later phases train 32 episodes a step at alpha's rate (2e-3, cosine to 1e-4 over the phase),
and replay earlier phases' train splits in place of the seed's whole files (REPLAY below,
`mypt_jax/curriculum/replay.py`): the tiny model overwrites what it no longer sees, and the
seed's whole files would train on the val splits that later phases watch for forgetting.
Sized by runs on two cores (AMD EPYC, 192 GFLOP/s float32 matmul):
- beta: 300 steps alone do not answer "Hello world" (val 1.60); on the seed's mix 400 did or
  did not by float rounding (val 0.97 / 1.00); with alpha's train split in place of its whole
  file, 600 steps missed it (val 0.29) and 800 answer both (val 0.17);
- gamma copies both gibberish words from step 150 of 300 on. Beta's train split x1 let beta's
  val loss rise x1.65 (a forgetting red line); x2 ends it below its start (0.18 -> 0.11);
- 3a-2's four facts are single episodes among ~13,000, mostly arithmetic. On the seed's mix,
  2400 steps gave 4/4 on one chain of earlier phases and 2/4 on another (the capitals first,
  5 + 7 and 9 x 3 late); 3000 steps (7 epochs) gave 4/4. Without gamma replayed, gamma's val
  loss rose x42 during 3a-2. With the replayed train splits (the mix grows from 14,926 to
  18,021 records) 3000 steps give 3/4 (5 + 7 missed, in all four replay mixes tried) and
  3400 gave 4/4, but the whole curriculum then took 15 min 10 s; halving beta's share left
  beta's val loss at x1.50 of its start. 48 episodes a step cost about as much per episode
  (5.2 against 5.5 ms). A 4-layer or a 256-wide model learned beta more slowly in the same
  steps, and 2400 steps of 16 episodes at 3e-3 gave 0/4.
"""

from configs import cpu_alpha

PHASES = ("3a1_alpha", "3a1_beta", "3a1_gamma", "3a2")
LATER = {"3a1_beta": (800, 200), "3a1_gamma": (300, 150), "3a2": (3000, 750)}  # steps, eval every
# Replayed earlier train splits, in place of the seed's whole-file replays (mypt_jax/curriculum/
# replay.py): {phase: {earlier phase: ratio}}.
REPLAY = {
    "3a1_beta": {"3a1_alpha": 1.0},
    "3a1_gamma": {"3a1_beta": 2.0, "3a1_alpha": 1.0},
    "3a2": {"3a1_beta": 1.0, "3a1_gamma": 0.25, "3a1_alpha": 1.0},
}


def get_config(phase: str = "3a1_alpha"):
    if phase not in PHASES:
        raise ValueError(f"pipeline_cpu: unknown phase {phase!r}; expected one of {PHASES}")
    c = cpu_alpha.get_config()
    c.block_size = 64  # one position table for all phases (see the docstring)
    c.init_from = ""  # from scratch; the pipeline points later phases at the previous run
    c.eval_max_new_tokens = 16  # the longest test answer (gamma's copy) is ~8 tokens
    c.tensorboard = False
    # Same function, less work: rows cut to 32/48 tokens where they fit (alpha and 3a-2
    # episodes are ~30), and each step's trained positions share its projection slots
    # (2.3x faster gamma steps; docs/performance.md "Padding-free steps").
    c.length_buckets = (32, 48, 64)
    c.flat_head = True
    c.workdir = f"runs/cpu/phase{phase}"
    c.dataset_dir = f"data/sft_ready/phase{phase}"
    c.eval_prompts_file = f"configs/sft_eval/phase{phase}_test_prompts.json"
    if phase == "3a1_alpha":
        return c
    # Later phases: 32 episodes a step at the alpha rate, cosine to min_lr over each phase's
    # own steps (measured on two cores: see the table in the docstring).
    c.batch_size = 32
    c.warmup_iters = 20
    c.max_iters, c.eval_interval = LATER[phase]
    c.simple_prompts_after = c.max_iters
    c.epoch_seed = {"3a1_beta": 4502, "3a1_gamma": 4503, "3a2": 4504}[phase]
    return c
