"""The run's GOLD checkpoint: at every eval the gate (if due) scores this eval's weights, the
selection (evals/gold.py) decides, and a selected eval's weights are written to
`<workdir>_gold` (our model dir, and the upstream's format in its `upstream/`), whole.

The gate is handed the upstream-format export of this eval's weights, in
`<workdir>/gate_model`, by its absolute path as `{model_name}`: the upstream's loaders join
`checkpoints/` with the name they are given, which keeps an absolute path as it is, so its
`scripts/eval/*.py` load it unchanged. (dc62a0c ran the gate before that eval's save, on the
previous eval's weights; here it scores the weights just evaluated.)

The selection's state is part of each checkpoint's record, so a resume continues it, and
`<workdir>/gold_selection_state.json` shows it after every eval, as upstream.

Multi-host: process 0 runs the gate and its verdict is broadcast, so every process makes the
same decision and joins the same weight gathers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from etils import epath

from mypt_jax.data import paths
from mypt_jax.training import exports
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.evals import gate, gold
from mypt_jax.training.observe.metrics import MetricsWriter

GATE_MODEL_DIR = "gate_model"


def _from_process0(value: Any) -> Any:
    """Process 0's JSON-able `value` on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int32)))
    padded = np.zeros(size, np.uint8)
    padded[:min(size, len(data))] = data[:size]
    got = np.asarray(multihost_utils.broadcast_one_to_all(padded), np.uint8)
    return json.loads(got.tobytes().decode())


class GoldRun:
    def __init__(self, r, writer: MetricsWriter, state: RunState):
        self.r, self.c, self.writer, self.run_state = r, r.config, writer, state
        self.st = gold.GoldState.from_dict(state.gold) if state.gold else gold.GoldState()
        self.workdir = paths.as_path(self.c.workdir)
        self.dir = epath.Path(gold.gold_dir(self.c.workdir))

    def announce(self) -> None:
        self.writer.print(f"GOLD selection: {self.c.gold_selection}, into {self.dir}")
        if gate.enabled(self.c):
            self.writer.print(gate.describe(self.c, str(self.workdir)))

    def _gate(self, step: int, params, final: bool) -> dict | None:
        """This eval's gate verdict (None: not due), on every process."""
        if not gate.due(self.c, self.st.eval_count, final):
            return None
        model = self.workdir / GATE_MODEL_DIR
        exports.write_to(self.r, params, step, {"upstream_export": model})
        result = None
        if jax.process_index() == 0:
            # Absolute paths: the gate runs in its own directory (gold_gate_cwd).
            out = gate.output_path(os.path.abspath(self.workdir), step, final)
            result = gate.run(self.c, os.path.abspath(model), out)
        return _from_process0(result)

    def on_eval(self, step: int, params, record: dict[str, Any], train_loss: float | None,
                final: bool) -> dict[str, Any]:
        """Decides the eval of `step` (its `record`), writes a selected GOLD copy, logs."""
        self.st.eval_count += 1
        verdict = self._gate(step, params, final)
        sets = {k.removeprefix("val_loss/"): v for k, v in record.items()
                if k.startswith("val_loss/")}
        decision = gold.decide(self.c, self.st, step=step, val_loss=record["val_loss"],
                               train_loss=0.0 if train_loss is None else train_loss,
                               set_losses=sets, gate=verdict)
        if decision["selected"]:
            exports.write_to(self.r, params, step, {
                "model_dir": self.dir, "upstream_export": self.dir / exports.UPSTREAM_DIR})
        self.run_state.gold = self.st.to_dict()
        if verdict is not None:
            decision["gate"] = gate.summary(verdict)
        self.writer.write(decision)
        if jax.process_index() == 0:
            (self.workdir / gold.STATE_FILE).write_text(
                json.dumps(gold.state_file_payload(self.c, self.st, verdict), indent=2))
        self._report(decision)
        return decision

    def summary(self) -> dict[str, Any]:
        """The run summary's GOLD entry: which step's weights, and where."""
        return {"strategy": self.c.gold_selection, "step": self.st.gold_step,
                "val_loss": self.st.to_dict()["best_gold_val_loss"], "dir": str(self.dir)}

    def _report(self, decision: dict[str, Any]) -> None:
        event, step = decision["event"], decision["iter"]
        if event == "gold_checkpoint":
            self.writer.print(f"  GOLD: step {step} (val {decision['val_loss']:.4f}) -> {self.dir}")
        elif event == "gold_blocked":
            self.writer.print(f"  GOLD blocked at step {step}: {decision['reason']}")
