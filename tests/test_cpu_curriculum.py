"""The CPU preset learns the curriculum: alpha from scratch, then beta and gamma from it.

`python -m mypt_jax.pipeline --preset cpu` as a user runs it (generate, mix, prepare, train,
test prompts), in a fresh root and a process of its own with one CPU device (the suite's
process simulates eight). Alpha's run is made once per module and every later phase starts
from the one before, as the real recipe does. The seed's Step 4 prompts of each phase
must be answered exactly, with no red line (forgetting included). 3a-2 is left to `benchmarks/cpu_curriculum.py` (the whole
curriculum, timed), which CI's budget cannot hold.
"""

from __future__ import annotations

import json

import pytest
from train_helpers import run_module

from datagen import format_lock
from mypt_jax.curriculum import pipeline
from mypt_jax.curriculum.phases import REPO
from mypt_jax.data.prepare import split_indices

STEP4 = {"Say hello.": "hello.", "Say Hello.": "Hello.", "Sag Hallo.": "Hallo."}


def _answers(summary: dict) -> dict[str, str]:
    return {r["name"]: r["completion"] for r in summary["test"]["results"]}


def _expected(phase: str) -> dict[str, str]:
    prompts = json.loads((REPO / pipeline.PHASES[phase].test_prompts).read_text())
    return prompts["expected_outputs"]


def run_phase(root, phase: str) -> dict:
    """The pipeline's command for one phase; its summary as written next to the run's log."""
    done = run_module(["-m", "mypt_jax.pipeline", "--phase", phase, "--preset", "cpu",
                       "--root", str(root)], timeout=1200, fast_compile=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "runs" / "cpu" / f"phase{phase}" / "log.summary.json").read_text())


@pytest.fixture(scope="module")
def alpha(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_curriculum")
    return root, run_phase(root, "3a1_alpha")


def test_step4_examples_stay_in_alpha_train_split():
    """A model trained from scratch cannot answer an example whose answer tokens it never saw;
    datagen asks for "Hallo." in several ways so that the seed's split cannot hide all of them."""
    records = format_lock.generate(mode="minimal", math="exclude")
    step4 = [i for i, r in enumerate(records) if r["messages"][0]["content"] in STEP4]
    assert len(step4) == 3
    _, val = split_indices(len(records), pipeline.VAL_SPLIT, seed=42)  # prepare's, the pipeline's
    assert not set(step4) & set(val.tolist()), "a Step 4 example landed in val"


@pytest.mark.slow
def test_alpha_learns_the_format_lock(alpha):
    _, s = alpha
    assert s["train"]["first_val_loss"] > 10.0 > 1.5 > s["train"]["final_val_loss"]
    assert _answers(s) == _expected("3a1_alpha")
    assert s["verdict"] == "ok", s["red_lines"]


@pytest.mark.slow
def test_beta_and_gamma_learn_to_copy_from_the_alpha_run(alpha):
    root, _ = alpha
    previous = root / "runs" / "cpu" / "phase3a1_alpha"
    for phase in ("3a1_beta", "3a1_gamma"):
        s = run_phase(root, phase)
        assert s["train"]["init_from"] == str(previous)
        assert s["train"]["final_val_loss"] < 0.6 * s["train"]["first_val_loss"]
        assert _answers(s) == _expected(phase), phase
        # No red line, forgetting included: each earlier phase's train split is replayed
        # (configs/pipeline_cpu.py REPLAY), and its val split, watched here, never trained on.
        assert s["verdict"] == "ok", (phase, s["red_lines"])
        assert s["data"]["replayed"] and all(s["data"]["replayed"].values())
        previous = root / "runs" / "cpu" / f"phase{phase}"
