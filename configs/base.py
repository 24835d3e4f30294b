"""Shared defaults of every training preset: one flat ConfigDict, upstream names where they exist.

Presets import `get_config()` from here and change a few fields. Any field can be overridden on
the command line (`--config.learning_rate=3e-5`); an unknown field fails naming it.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()

    # ----- model (upstream config.json names) -----
    c.n_layer = 32  # transformer blocks
    c.n_embd = 1280  # model width
    c.n_head = 20  # attention heads
    c.block_size = 512  # context length of a training row (upstream configs say 512; see init)
    c.vocab_size = 50304  # GPT-2 50257 + special tags, padded to a multiple of 64
    c.dropout = 0.05  # attention-prob, attention-residual and MLP-residual dropout
    c.bias = False  # biases on the qkv / attention projection
    c.tie_weights = True  # lm_head shares the token embedding
    c.pos_encoding = "learned"  # "learned" | "rope"
    c.mlp_type = "gelu"  # "gelu" | "swiglu"
    c.norm_type = "layernorm"  # "layernorm" | "rmsnorm"
    c.rope_theta = 10000.0  # RoPE base (pos_encoding="rope" only)
    c.rope_scale = 1.0  # RoPE position interpolation factor
    c.param_dtype = ""  # storage dtype of the weights; "" = chosen by `precision`
    c.dtype = ""  # matmul compute dtype; "" = chosen by `precision`
    c.remat = "none"  # per-layer rematerialisation: "none" | "full" | "dots"
    # One lax.scan over the blocks: compile time flat in depth. False unrolls them: a 4-layer
    # step ran ~5% faster on a Sapphire Rapids CPU (no stacked per-layer residuals to copy).
    c.scan_layers = True
    c.attention = "auto"  # "auto" (splash on TPU, cudnn on GPU, xla on CPU) | "xla" | "splash" | "cudnn"
    c.attention_prob_dropout = True  # False: only residual dropout (splash/cudnn with dropout > 0 need it)

    # ----- data -----
    c.dataset_dir = ""  # prepared episode dataset (train/, val/, tokenizer_state.json)
    c.batch_size = 16  # global episodes per optimizer step (all processes together)
    c.batch_sampling_mode = "epoch"  # "epoch": seeded permutation per epoch | "random"
    c.episode_min_tokens = 2  # episodes shorter than this are skipped (upstream default)
    c.epoch_seed = 1337  # epoch e is shuffled with RandomState(epoch_seed + e)
    c.epoch_shuffle = True  # False = file order every epoch
    c.use_loss_mask = True  # train only on assistant tokens (mask.bin); False = every position
    # Rows are cut to the batch's longest episode, rounded up to one of these lengths (one
    # compile each). () = powers of two from 64, and block_size; (block_size,) = upstream rows.
    c.length_buckets = ()
    c.pack_episodes = False  # pack each step's episodes into as few rows as fit (docs/performance.md)

    # ----- optimisation -----
    c.learning_rate = 3e-4  # peak learning rate
    c.max_iters = 1000  # optimizer steps
    c.warmup_iters = 0.0  # warmup steps; a float in (0, 1) is a fraction of max_iters (upstream)
    c.lr_schedule = "constant"  # after warmup: "constant" (upstream) | "cosine" down to min_lr
    c.min_lr = 0.0  # floor of the cosine schedule
    c.grad_clip = 1.0  # global-norm clip, upstream formula min(1, clip/(norm+1e-6)); 0 = off
    c.weight_decay = 0.1  # AdamW decoupled decay, on the 2-D block matrices only
    c.beta1 = 0.9  # AdamW beta1
    c.beta2 = 0.95  # AdamW beta2
    c.adam_eps = 1e-8  # AdamW epsilon (torch default)
    c.grad_accum_steps = 1  # microbatches per step; the loss is normalised once over all of them
    c.precision = "mixed"  # "mixed": f32 weights, bf16 matmuls | "fp32" | "bf16_pure" (upstream)
    c.loss_chunk_size = 0  # >0: vocab projection + CE over sequence chunks of this many tokens
    # Vocabulary projection: 0 = only each batch's trained positions (K in powers of two from
    # 8), K > 0 = K unless a batch needs more, -1 = every position (the upstream).
    c.loss_positions = 0
    # True: a data shard's rows share their K x rows projection slots, so K follows the
    # shard's mean trained count per row, not its busiest row (same loss; grad_accum_steps=1).
    c.flat_head = False
    c.seed = 0  # model init (fresh runs) and the dropout stream (fold_in(seed, step))
    # Upstream layer freezing: frozen parameters take no update and hold no optimizer state.
    c.freeze_layers = 0  # the first N transformer blocks are frozen (0 = none)
    c.freeze_embeddings = False  # wte (so a tied output head too) and wpe are frozen

    # ----- evaluation -----
    c.eval_interval = 100  # eval (val loss + generations) at step 0 and every this many steps
    c.eval_iters = 200  # val batches per eval (upstream's default)
    c.eval_sets = ""  # "name=dir,...": more prepared datasets whose val loss every eval logs
    c.forgetting_factor = 1.5  # red line: an eval set's loss rose more than this x its first; 0 = off
    c.eval_prompts_file = ""  # JSON {"prompts": {...}, "expected_outputs": {...}}; "" = none
    c.eval_max_new_tokens = 0  # greedy tokens per eval prompt; 0 = 64, less if block_size leaves less
    c.simple_prompts_after = 500  # health check: simple prompts must start passing by this step
    c.log_interval = 10  # train-metric JSONL/console line every this many steps
    # Masked-token accuracy (argmax == target where the loss weight is nonzero) on eval_iters
    # train and val batches at each eval, read from streams of its own (under the dc62a0c
    # semantics, from the run's streams, whenever use_loss_mask is on).
    c.token_accuracy = False
    # The upstream's saturation flags on that accuracy (needs it on): over the last `window`
    # evals from step `min_steps` on, plateau / memorization shift / gap widening.
    c.saturation_check = False
    c.saturation_window = 4
    c.saturation_min_steps = 200
    c.saturation_min_delta = 0.002
    c.saturation_gap_threshold = 0.01

    # ----- GOLD checkpoint: <workdir>_gold holds the best eval's weights (training/evals/gold.py)
    c.gold_selection = ""  # "" = off | "val_loss" | "hybrid" | "external_gate"
    c.gold_loss_guards = True  # block a candidate on overfit, rising val loss, eval-set regression
    c.gold_overfit_ratio = 5.0  # val loss / train loss above this blocks
    c.gold_consecutive_rises = 2  # this many val-loss rises before the current eval block
    c.gold_eval_regression = 0.2  # an eval set's loss this fraction above its first blocks
    c.gold_gate_script = ""  # external gate: a script run at evals; "" = no gate
    c.gold_gate_args = ()  # its arguments; {model_name} and {output_json} are filled in
    c.gold_gate_python = ""  # the interpreter it runs with; "" = this one
    c.gold_gate_cwd = ""  # its working directory (a relative script is found there); "" = here
    c.gold_gate_timeout_s = 1200  # a gate running longer fails
    c.gold_gate_interval_evals = 1  # run it at every this many evals
    c.gold_gate_on_final = True  # and at the final eval
    c.gold_gate_metric_path = ""  # dotted path of its metric in the output JSON; "" = none
    c.gold_gate_metric_goal = "max"  # "max" | "min"
    c.gold_gate_pass_path = "gate_passed"  # dotted path of its pass flag (default: exit status 0)
    c.gold_gate_require_pass = False  # a failed gate blocks the candidate
    c.gold_gate_strict = False  # a gate that could not run blocks the candidate

    # ----- which upstream's loop semantics (docs/upstream-compatibility.md) -----
    # "24cc3fc": the seed-era upstream's loop, which is ours. "dc62a0c": the newer upstream's:
    # the loss is the mean of the microbatch means, evals read microbatch-sized batches, and
    # every eval reads eval_iters microbatches of the training stream for its accuracy (so the
    # batches trained on move on) and eval_iters more of the val stream.
    c.upstream_semantics = "24cc3fc"

    # ----- checkpoints and logs -----
    c.workdir = ""  # where the run lives (checkpoints/, tb/, log.jsonl); --workdir sets it too
    # Saves (training/checkpoint/policy.py). Temporary saves every 15 minutes bound the work a
    # crash without a grace period loses (SIGTERM saves at once): by Young's rule, sqrt(2 x
    # blocking x time between failures), a 1-8 s save (750M async copy .. whole write) and a
    # day between hard failures give 7-20 minutes; 15 is levanter's default and costs a
    # 750M run under 1% of its wall-clock. The final save always happens.
    c.checkpoint_minutes = 15.0  # temporary saves on wall-clock, removed once a newer commits; 0 = off
    c.checkpoint_interval = 0  # permanent saves every this many steps, never removed; 0 = off
    c.checkpoint_at_eval = False  # a save at every eval (the upstream's cadence)
    c.keep_checkpoints = 2  # newest saves kept, temporary ones not counted
    c.keep_best = 1  # plus this many of the saves by lowest val loss (adds no save)
    c.async_checkpointing = "auto"  # "auto": async on accelerators, sync on CPU | "on" | "off"
    # Persistent XLA cache: later phases, reruns and resumes load the programs compiled before.
    # "auto" = $XDG_CACHE_HOME (or ~/.cache)/mypt_jax/xla; a gs:// path on pods; "" = off.
    c.compilation_cache_dir = "auto"
    c.compile_plan = "auto"  # "auto": rare batch shapes run padded up to compiled ones | "exact"
    c.compile_threads = 0  # programs compiled at once before step 0; 0 = one per two CPU cores
    # Train programs past the first compile behind the steps, each in the order the run
    # reaches it; a batch waits only for its own. "auto": on accelerators, whose host cores
    # idle while the devices step; off on CPU, whose cores are the ones stepping | "on" | "off"
    c.compile_background = "auto"
    c.prefetch_batches = 2  # train batches shaped and placed on the devices ahead; 0 = in the loop
    c.allow_data_change = False  # resume although the dataset files or batch-stream fields changed
    c.export_upstream = False  # also write the final weights as an upstream checkpoint dir
    c.log_file = ""  # JSONL log; "" = <workdir>/log.jsonl
    c.tensorboard = True  # write TensorBoard event files to <workdir>/tb

    # ----- profiler (training/observe/profiler.py; docs/performance.md) -----
    c.profiler_start_step = 0  # profile from this many steps after this process's first
    c.profiler_num_steps = 0  # steps in the profile window; 0 = off
    c.profiler_port = 0  # >0: jax's profiler server on this port, for capture on demand
    c.profiler_all_hosts = False  # every process writes a profile, not process 0 alone

    # ----- initialisation -----
    c.init_from = ""  # our model dir | upstream checkpoint dir | another run's workdir; "" = fresh
    c.inherit_init_config = False  # True: take block_size and the loader fields from init_from (upstream quirk)

    # ----- mesh (per slice; -1 = all remaining devices of a slice) -----
    c.mesh_data = -1  # data-parallel axis
    c.mesh_fsdp = 1  # fully-sharded data-parallel axis (params and optimizer state split)
    c.mesh_tensor = 1  # tensor-parallel axis (heads / mlp / vocab split)
    # Slices each axis spans over the data-centre network (multi-slice TPU; product = slices).
    # The whole axis is mesh_<axis> x mesh_dcn_<axis>.
    c.mesh_dcn_data = 1  # slices along the data axis (the usual place for several)
    c.mesh_dcn_fsdp = 1  # slices along fsdp (only with mesh_data resolving to 1)
    c.mesh_dcn_tensor = 1  # must stay 1: tensor parallelism over DCN is not supported
    return c
