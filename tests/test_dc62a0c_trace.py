"""A dc62a0c-style JSON recipe run through the upstream command line against the PyTorch
reference of that upstream's loop (torch_reference_loop.dc62a0c_trace): every step's train
loss, every eval's val, eval-set and accuracy numbers, and the final val loss.

The native case runs the same recipe with our own loop semantics against the same reference
with its four dc62a0c switches off, which checks the reference's stream and eval bookkeeping
against a loop already verified elsewhere.

The fast test holds ours to the upstream's own train.py at dc62a0c, run once on this tree and
committed as numbers (tests/fixtures/dc62a0c_trace/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import train_helpers

from mypt_jax.data import episodes
from mypt_jax.data.tokenizer import Tokenizer
from tests.test_weighted_packed import BLOCK, _episodes, _pack, _write_shard
from tests.torch_reference import Cfg, TorchGPT, write_upstream_dir
from tests.torch_reference_loop import dc62a0c_trace

ARCH = dict(block_size=BLOCK, vocab_size=50304, n_embd=32, n_head=4, n_layer=2, dropout=0.0,
            bias=False, tie_weights=True, pos_encoding="rope", mlp_type="swiglu",
            norm_type="rmsnorm", rope_scale=4.0)
EPOCH_SEED = 4242
SETS = {"general": "data/eval_general"}
RECIPE = {
    "name": "dc62a0c_trace",
    "description": "a tiny SFT recipe in the style of the upstream's phase3 configs",
    **ARCH,
    "batch_size": 2,
    "grad_accum_steps": 3,
    "learning_rate": 2e-3,
    "max_iters": 16,
    "eval_interval": 4,
    "eval_iters": 2,
    "warmup_iters": 3,
    "weight_decay": 0.05,
    "grad_clip": 1.0,
    "use_amp": False,
    "use_loss_mask": True,
    "batch_sampling_mode": "epoch",
    "episode_min_tokens": 2,
    "epoch_seed": EPOCH_SEED,
    "epoch_shuffle": True,
    "eval_sets": SETS,
    "eval_seed": 1337,
}
# The upstream command line, for the upstream's train.py and ours alike.
ARGV = ["--model_name", "run", "--dataset_dir", "data/sft", "--init_from_model", "init",
        "--config_file", "recipe.json"]
UPSTREAM_TRACE = Path(__file__).parent / "fixtures" / "dc62a0c_trace" / "upstream_trace.json"
# Each eval field of the upstream's JSONL log -> our log's name for it, and the tolerance (the
# upstream rounds to 6 decimals; counts are exact).
UPSTREAM_EVAL_FIELDS = {
    "val_loss": ("val_loss", 1e-4),
    **{f"eval_{name}": (f"val_loss/{name}", 1e-4) for name in SETS},
    "train_masked_token_acc": ("train_masked_token_acc", 1e-5),
    "val_masked_token_acc": ("val_masked_token_acc", 1e-5),
    "train_masked_token_count": ("train_masked_token_count", 0),
    "val_masked_token_count": ("val_masked_token_count", 0),
}
# Our eval record's accuracy fields (the upstream's names).
ACC_FIELDS = ("train_masked_token_acc", "val_masked_token_acc")
# (the reference's four dc62a0c switches, our config fields set by hand)
CASES = {
    "dc62a0c": (True, {}),  # the command line picks the semantics from the recipe's fields
    "native": (False, {"upstream_semantics": "24cc3fc"}),  # the seed-era loop: ours
}


def _tree(tmp: Path) -> Path:
    """The upstream's working tree: a packed weighted dataset with its val split, an unpacked
    weighted eval set, the recipe, and the init checkpoint as checkpoints/init."""
    root = tmp / "data" / "sft"
    _write_shard(root / "train", _pack(_episodes(0) + _episodes(1) + _episodes(2), BLOCK),
                 weights=True)
    _write_shard(root / "val", _pack(_episodes(3) + _episodes(4), BLOCK), weights=True)
    for seed, split in enumerate(episodes.SPLITS, start=5):
        _write_shard(tmp / SETS["general"] / split, _episodes(seed), weights=True)
    for d in (root, tmp / SETS["general"]):
        Tokenizer().save(d / episodes.TOKENIZER_STATE_FILE)
    (tmp / "recipe.json").write_text(json.dumps(RECIPE, indent=2))
    tok = json.loads((root / episodes.TOKENIZER_STATE_FILE).read_text())
    init = write_upstream_dir(_model(), tmp / "checkpoints" / "init", generation="head",
                              tokenizer_state=tok)
    # With --init_from_model the upstream reads the loader fields from the init's config.json.
    cfg = json.loads((init / "config.json").read_text())
    (init / "config.json").write_text(json.dumps({**cfg, "epoch_seed": EPOCH_SEED}, indent=2))
    return tmp


def _model() -> TorchGPT:
    return TorchGPT(Cfg(**ARCH)).randomize_(11)


def _train_ours(argv: list[str], overrides: dict) -> None:
    """What `python -m mypt_jax.train ARGV --config.K=V ...` runs, in this process."""
    from configs import base
    from mypt_jax.interop import upstream_cli
    from mypt_jax.training import trainer

    args, rest = upstream_cli.split_argv(argv)
    assert not rest, rest
    config = base.get_config()  # with the --config.K=V values, as absl hands it to main()
    for k, v in overrides.items():
        config[k] = v
    trainer.train(upstream_cli.apply(config, upstream_cli.translate(args), set(overrides)))


def _ours(log: list[dict]) -> dict:
    steps = sorted((r["iter"], r["train_loss"]) for r in log if "train_loss" in r)
    assert [s for s, _ in steps] == list(range(RECIPE["max_iters"]))
    evals = {r["iter"]: r for r in log if "val_loss" in r}
    final = evals.pop(RECIPE["max_iters"])
    assert final.get("final")
    return {"train_loss": [x for _, x in steps], "evals": evals, "final": final}


@pytest.mark.slow  # about 25 s a case: 16 steps each of ours and of torch through a 50304-row head
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_recipe_trains_as_the_reference_loop(tmp_path, monkeypatch, case):
    dc62a0c, overrides = CASES[case]
    monkeypatch.chdir(_tree(tmp_path))
    # The suite's process has 8 CPU devices; the microbatch of 2 rows splits 2 ways.
    _train_ours(ARGV, {**overrides, "log_interval": 1, "tensorboard": False, "mesh_data": 2,
                       "mesh_tensor": 4, "checkpoint_at_eval": False})
    ours = _ours(train_helpers.read_log(tmp_path / "checkpoints" / "run" / "log.jsonl"))
    r = RECIPE
    theirs = dc62a0c_trace(
        _model(), train_dir="data/sft", eval_sets=SETS, max_iters=r["max_iters"],
        eval_interval=r["eval_interval"], eval_iters=r["eval_iters"], micro_batch=r["batch_size"],
        grad_accum=r["grad_accum_steps"], lr=r["learning_rate"], warmup=r["warmup_iters"],
        weight_decay=r["weight_decay"], grad_clip=r["grad_clip"], epoch_seed=EPOCH_SEED,
        cosine=dc62a0c, accuracy_pass=dc62a0c, eval_batch_micro=dc62a0c,
        mean_of_micro_means=dc62a0c, final_sets=not dc62a0c)

    np.testing.assert_allclose(ours["train_loss"], theirs["train_loss"], atol=1e-4, rtol=0)
    assert sorted(ours["evals"]) == sorted(theirs["val"]) == [0, 4, 8, 12]
    for step, record in ours["evals"].items():
        np.testing.assert_allclose(record["val_loss"], theirs["val"][step], atol=1e-4, rtol=0,
                                   err_msg=f"val loss at step {step}")
        for name in SETS:
            np.testing.assert_allclose(record[f"val_loss/{name}"], theirs["sets"][name][step],
                                       atol=1e-4, rtol=0, err_msg=f"{name} at step {step}")
        if dc62a0c:
            got = tuple(record[k] for k in ACC_FIELDS)
            np.testing.assert_allclose(got, theirs["acc"][step], atol=1e-6, rtol=0,
                                       err_msg=f"accuracy at step {step}")
    np.testing.assert_allclose(ours["final"]["val_loss"], theirs["final_val"], atol=1e-4, rtol=0)
    if not dc62a0c:  # our final eval logs the eval sets too
        for name in SETS:
            np.testing.assert_allclose(ours["final"][f"val_loss/{name}"],
                                       theirs["sets"][name][r["max_iters"]], atol=1e-4, rtol=0)


def test_ours_matches_the_upstreams_recorded_trace(tmp_path, monkeypatch):
    """Every step's train loss and every eval's numbers against the upstream's own train.py,
    recorded once (tests/fixtures/dc62a0c_trace/README.md)."""
    upstream = json.loads(UPSTREAM_TRACE.read_text())
    monkeypatch.chdir(_tree(tmp_path))
    # The suite's 8 CPU devices, as the reference case runs; the upstream ran on one.
    _train_ours(ARGV, {"log_interval": 1, "tensorboard": False, "mesh_data": 2, "mesh_tensor": 4,
                       "checkpoint_at_eval": False})
    ours = _ours(train_helpers.read_log(tmp_path / "checkpoints" / "run" / "log.jsonl"))

    np.testing.assert_allclose(ours["train_loss"], upstream["train_loss"], atol=1e-4, rtol=0)
    assert sorted(ours["evals"]) == sorted(map(int, upstream["evals"])) == [0, 4, 8, 12]
    for step, theirs in upstream["evals"].items():
        assert set(theirs) == set(UPSTREAM_EVAL_FIELDS)
        for field, (our_field, atol) in UPSTREAM_EVAL_FIELDS.items():
            np.testing.assert_allclose(ours["evals"][int(step)][our_field], theirs[field],
                                       atol=atol, rtol=0, err_msg=f"{field} at step {step}")
    np.testing.assert_allclose(ours["final"]["val_loss"], upstream["final_val_loss"], atol=1e-4,
                               rtol=0)
