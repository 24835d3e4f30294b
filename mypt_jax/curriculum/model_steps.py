"""The pipeline's Steps 3 and 4 (train, test prompts), and the end of a phase that waits
for its final writes (`PhaseRun.finish`, the one-job curriculum's hand-off).

Step 3 trains from the previous phase's run (read back from its workdir), or from its
weights on the devices when the phases run as one job (training/handoff.py). Step 4
answers the test prompts from the run's model directory, or from those same weights in
memory; then its results file is written once the model directory has been.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mypt_jax.curriculum.phases import Phase, PipelineError, test_results_path
from mypt_jax.curriculum.summary import phase_summary, write_summary
from mypt_jax.data.paths import write_json_atomic
from mypt_jax.training.checkpoint.run_meta import finished_run

SKIPPED = "skipped (complete)"


def is_main() -> bool:
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------- Step 3


def train_step(config, init=None, hand_off: bool = False) -> dict[str, Any]:
    """Trains the phase. `init`: the previous phase's weights on the devices; `hand_off`:
    this phase's go to the next the same way, under "handoff" (training/handoff.py)."""
    from mypt_jax.training import trainer

    if finished_run(config.workdir, config.max_iters):
        return {"status": SKIPPED, "workdir": config.workdir}
    summary = trainer.train(config, init=init, hand_off=hand_off)
    return {"status": "done", "workdir": config.workdir, "handoff": summary.get("handoff")}


# ----------------------------------------------------------------------------- Step 4


def question(prompt: str) -> str:
    start, end = prompt.rfind("<myPT_user>"), prompt.rfind("</myPT_user>")
    return prompt[start + len("<myPT_user>"):end] if 0 <= start < end else prompt


def test_step(config, prompts_file: str, weights=None) -> dict[str, Any]:
    """Greedy answers to the phase's test prompts from the run's final model directory, or
    from `weights` (an InitSource holding the final params, handed over in memory: the
    same values, in float32 as the model directory is read). Results from memory are
    written by `write_test_results` once the model directory is."""
    from mypt_jax.decoding import eval_prompts
    from mypt_jax.interop import model_io

    model_dir = Path(config.workdir) / model_io.RUN_MODEL_DIR
    out = test_results_path(config.workdir)
    if weights is None and not (model_dir / "config.json").is_file():
        raise PipelineError(f"{model_dir}: no final model; run the train step first")
    if (weights is None and out.is_file()
            and out.stat().st_mtime >= (model_dir / "config.json").stat().st_mtime):
        saved = json.loads(out.read_text(encoding="utf-8"))
        if saved.get("prompts_file") == prompts_file:
            return {"status": SKIPPED, "results": saved["results"]}
    if weights is None:
        module, _, tokenizer = model_io.load_model(model_dir, dtype="float32",
                                                   compute_dtype="float32")
    else:
        module = model_io.in_memory_model(weights.params, weights.model_config,
                                          dtype="float32", compute_dtype="float32")
        tokenizer = weights.tokenizer
    results = eval_prompts.evaluate(module, tokenizer, eval_prompts.load_eval_prompts(prompts_file),
                                    max_new_tokens=config.eval_max_new_tokens or None)
    if weights is None:
        write_test_results(config, prompts_file, results)
    return {"status": "done", "results": results, "in_memory": weights is not None}


def write_test_results(config, prompts_file: str, results: list[dict]) -> None:
    from mypt_jax.interop import model_io

    write_json_atomic(test_results_path(config.workdir), {
        "model_dir": str(Path(config.workdir) / model_io.RUN_MODEL_DIR),
        "prompts_file": prompts_file, "results": results})




@dataclasses.dataclass
class PhaseRun:
    """A phase whose steps ran. Handed off, its final writes may still be in flight: the
    summary (read back from the files) and test results wait for them (`finish`)."""

    root: Path
    phase: Phase
    config: Any
    prompts_file: str
    replays: Sequence[tuple[str, float]]
    status: dict[str, dict]
    wall_time_s: float
    handoff: Any = None  # training.handoff.Handoff, or None
    tested: dict | None = None  # the test step's result

    def wait(self) -> None:
        if self.handoff is not None:
            self.handoff.writes.wait()

    def finish(self) -> dict[str, Any]:
        self.wait()
        if self.tested and self.tested.get("in_memory") and is_main():
            write_test_results(self.config, self.prompts_file, self.tested["results"])
        summary = phase_summary(self.root, self.phase, self.config, self.prompts_file,
                                self.status, self.replays)
        summary["wall_time_s"] = self.wall_time_s
        if "train" in summary and is_main():
            log_path = Path(self.config.log_file)
            target = log_path.with_name(log_path.name.removesuffix(".jsonl") + ".summary.json")
            summary["summary_file"] = str(write_summary(target, summary))
        return summary
