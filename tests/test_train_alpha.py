"""The CPU alpha preset learns the 3a-1 alpha format lock and answers the seed's Step 4 prompts."""

import json
import time

import pytest

from configs import cpu_alpha
from datagen import format_lock
from datagen.records import write_jsonl
from mypt_jax.data.prepare import prepare, split_indices
from mypt_jax.training import trainer

STEP4 = {"Say hello.": "hello.", "Say Hello.": "Hello.", "Sag Hallo.": "Hallo."}
PROMPTS_FILE = "configs/sft_eval/phase3a1_alpha_test_prompts.json"


def _assert_step4_in_train(records, val_split=0.1, seed=42):
    """The seed doc's Step 2 split must keep its Step 4 examples in train.

    A model trained from scratch cannot answer an example whose answer tokens it never saw;
    datagen asks for "Hallo." in several ways so that one split cannot hide all of them.
    """
    step4 = [i for i, r in enumerate(records) if r["messages"][0]["content"] in STEP4]
    assert len(step4) == 3
    _, val = split_indices(len(records), val_split, seed)
    assert not set(step4) & set(val.tolist()), "a Step 4 example landed in val"


@pytest.mark.slow
def test_cpu_alpha_learns_the_format_lock(tmp_path):
    records = format_lock.generate(mode="minimal", math="exclude")
    write_jsonl(tmp_path / "alpha.jsonl", records)
    _assert_step4_in_train(records)
    prepare(tmp_path / "alpha.jsonl", tmp_path / "ds", val_split=0.1, progress=False)
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
