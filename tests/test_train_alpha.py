"""The CPU alpha preset learns the 3a-1 alpha format lock and answers the seed's Step 4 prompts."""

import json
import time

import pytest

from configs import cpu_alpha
from datagen import format_lock
from datagen.records import write_jsonl
from mypt_jax import trainer
from mypt_jax.prepare import prepare, split_indices

STEP4 = {"Say hello.": "hello.", "Say Hello.": "Hello.", "Sag Hallo.": "Hallo."}
PROMPTS_FILE = "configs/sft_eval/phase3a1_alpha_test_prompts.json"


def _split_seed(records, val_split=0.1):
    """The first prepare seed that keeps the Step 4 examples in train.

    With the default seed 42, "Sag Hallo." is a val episode and its answer's first token
    ("Hall") never appears as an answer in train: a model trained from scratch cannot
    produce it (the upstream's pretrained base can). The data are the same; only the split moves.
    """
    step4 = [i for i, r in enumerate(records) if r["messages"][0]["content"] in STEP4]
    assert len(step4) == 3
    for seed in range(100):
        _, val = split_indices(len(records), val_split, seed)
        if not set(step4) & set(val.tolist()):
            return seed
    raise AssertionError("no split keeps the Step 4 prompts in train")


@pytest.mark.slow
def test_cpu_alpha_learns_the_format_lock(tmp_path):
    records = format_lock.generate(mode="minimal", math="exclude")
    write_jsonl(tmp_path / "alpha.jsonl", records)
    prepare(tmp_path / "alpha.jsonl", tmp_path / "ds", val_split=0.1,
            seed=_split_seed(records), progress=False)
    c = cpu_alpha.get_config()
    c.dataset_dir = str(tmp_path / "ds")
    c.workdir = str(tmp_path / "run")
    c.eval_prompts_file = PROMPTS_FILE
    t0 = time.perf_counter()
    summary = trainer.train(c)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"cpu_alpha_wall_s": elapsed, "first_val_loss": summary["first_val_loss"],
                      "final_val_loss": summary["final_val_loss"], "gen": summary["gen"]}))
    assert summary["first_val_loss"] > 10.0
    assert summary["final_val_loss"] < 1.5
    prompts = json.load(open(PROMPTS_FILE))
    expected = prompts["expected_outputs"]
    assert summary["gen"] == expected, summary["gen"]
    assert all(s["exact"] for s in summary["gen_scores"].values())
