"""One eval of the run: the val loss, the eval-prompt generations, each eval set's loss, and
the red-line checks, logged as one record and kept in the run state."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax

from mypt_jax.parallel import device_memory as dm
from mypt_jax.training.checkpoint.run_state import RunState
from mypt_jax.training.evals import decode_layout as layout_lib
from mypt_jax.training.evals import health
from mypt_jax.training.evals.accuracy import AccuracyPass
from mypt_jax.training.evals.val_loss import ValLoss
from mypt_jax.training.observe.metrics import MetricsWriter
from mypt_jax.training.setup import semantics


def load_eval_prompts(path: str):
    if not path:
        return None
    from mypt_jax.decoding import eval_prompts

    return eval_prompts.load_eval_prompts(path)


def generate(model, tokenizer, eval_prompts, max_new_tokens: int) -> list[dict]:
    """Greedy completions of the eval prompts, scored."""
    if eval_prompts is None:
        return []
    from mypt_jax.decoding import eval_prompts as eval_lib

    return list(eval_lib.evaluate(model, tokenizer, eval_prompts, max_new_tokens=max_new_tokens))


def planned_reads(c, val_fn: ValLoss, sets: dict[str, ValLoss],
                  accuracy_fn: ValLoss | None) -> list[tuple[ValLoss, list[int]]]:
    """(eval reader, the window start of each of its reads over the whole run) of every
    eval of a run from step 0 (steps 0, interval, ..., final): the eval shape plan's, the
    run's and the preflight's. `accuracy_fn`: the train-split reader of the masked-token
    accuracy, where it is scored."""
    steps = semantics.eval_steps(c)
    val_at = semantics.val_positions(c)
    reads = [(val_fn, val_at), *((fn, [k * c.eval_iters for k in range(len(steps))])
                                 for fn in sets.values())]
    if accuracy_fn is not None:
        newer = semantics.newer(c)
        # The j-th eval of a dc62a0c run reads after s updates' draws and j evals' draws.
        per_update = semantics.draws_per_update(c)
        reads.append((accuracy_fn, [(s * per_update if newer else 0) + j * c.eval_iters
                                    for j, s in enumerate(steps)]))
        if newer:
            reads.append((val_fn, [p + c.eval_iters for p in val_at]))
    return reads


class Evaluator:
    def __init__(self, r, mdef, mesh, writer: MetricsWriter, val_fn: ValLoss,
                 sets: dict[str, ValLoss], eval_prompts, schedule,
                 on_nan: Callable[[str, float, int], None], accuracy: AccuracyPass | None = None):
        self.r, self.c, self.mdef, self.mesh, self.writer = r, r.config, mdef, mesh, writer
        self.val_fn, self.sets, self.eval_prompts = val_fn, sets, eval_prompts
        self.accuracy = accuracy
        self.schedule, self.on_nan = schedule, on_nan
        self._decode_plan: layout_lib.DecodePlan | None = None

    def planned_reads(self) -> list[tuple[ValLoss, list[int]]]:
        """`planned_reads` of this run's readers."""
        train_fn = self.accuracy.train_fn if self.accuracy and self.accuracy.scores else None
        return planned_reads(self.c, self.val_fn, self.sets, train_fn)

    def decode_plan(self) -> layout_lib.DecodePlan:
        """Whether the eval-prompt decode gathers the weights (`decode_layout.plan`), decided
        once; the slower sharded choice is printed, so a slow decode says why."""
        if self._decode_plan is None:
            plan = layout_lib.agreed(layout_lib.plan(
                self.r, self.mesh, len(self.eval_prompts.prompts),
                dm.device_capacity(dm.local_device(self.mesh))))
            if not plan.gather:
                self.writer.print(plan.describe())
            self._decode_plan = plan
        return self._decode_plan

    def generations(self, params) -> list[dict]:
        if self.eval_prompts is None:
            return []
        weights = layout_lib.decode_layout(params, self.mesh, self.decode_plan().gather)
        return generate(self.mdef.merge(weights), self.r.tokenizer, self.eval_prompts,
                        self.c.eval_max_new_tokens)

    def run(self, step: int, params, run: RunState, final: bool = False) -> dict[str, Any]:
        """Evaluates the weights of `step`, advances the val streams, logs the record."""
        c = self.c
        t0 = time.perf_counter()
        val_start, acc = run.val_position, self.accuracy
        train_at, val_acc_at = acc.positions(run, step, val_start) if acc else (None, None)
        scoring = acc is not None and acc.scores
        v, v_tok, val_counts = self.val_fn.evaluate(params, val_start,
                                                    val_acc_at if scoring else None)
        run.val_position += semantics.val_draws_per_eval(c)
        if not math.isfinite(v):
            self.on_nan("val loss", v, step)
        scores = acc.record(params, run, step, train_at, val_counts) if scoring else {}
        t1 = time.perf_counter()
        results = self.generations(params)
        t2 = time.perf_counter()
        set_losses = {}
        for name, set_fn in self.sets.items():
            set_losses[name] = set_fn(params, run.set_positions[name])[0]
            run.set_positions[name] += c.eval_iters
        record: dict[str, Any] = {"iter": step, "val_loss": v, "val_loss_token_weighted": v_tok,
                                  **{f"val_loss/{n}": x for n, x in set_losses.items()}, **scores}
        run.record_eval(step, v, set_losses)
        findings = health.check(
            run.val_history, results, step=step, tag_strings=list(self.r.tokenizer.id_by_string),
            simple_prompts_after=c.simple_prompts_after,
        ) + [f for f in [health.forgetting(run.first_sets, set_losses, c.forgetting_factor)] if f]
        if results:
            record["gen"] = {g["name"]: g["completion"] for g in results}
            record["gen_scores"] = {
                g["name"]: {"exact": g.get("exact"), "normalized": g.get("normalized")}
                for g in results
            }
        if findings:
            record["red_lines"] = findings
        if final:
            record["final"] = True
        now = time.perf_counter()
        record.update(eval_time=now - t0, val_s=t1 - t0, generate_s=t2 - t1, eval_sets_s=now - t2)
        run.last_eval = {k: x for k, x in record.items() if k != "gen"}
        self._report(step, record, set_losses, results, findings)
        return record

    def _report(self, step: int, record: dict, set_losses: dict[str, float], results: list[dict],
                findings: list[str]) -> None:
        v, v_tok = record["val_loss"], record["val_loss_token_weighted"]
        self.writer.write(record)
        self.writer.scalars(step, {"val_loss": v, "val_loss_token_weighted": v_tok,
                                   **{f"val_loss/{n}": x for n, x in set_losses.items()}})
        if results:
            self.writer.text(step, "gen", "\n\n".join(
                f"**{g['name']}**: `{g['completion']}`" for g in results))
        lr = float(jax.device_get(self.schedule(min(step, self.c.max_iters - 1))))
        sets_text = "".join(f" | {n} {x:.4f}" for n, x in set_losses.items())
        self.writer.print(f"step {step}: val {v:.4f} (token-weighted {v_tok:.4f}){sets_text} | "
                          f"lr {lr:.2e}{AccuracyPass.describe(record)}")
        for g in results:
            mark = "ok" if g.get("exact") or g.get("normalized") else "--"
            self.writer.print(f"  [{mark}] {g['name']}: {g['completion']!r}")
        for f in findings:
            self.writer.print(f"  RED LINE: {f}")
