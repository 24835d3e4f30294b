"""The train steps' log lines: metrics fetched once per log window, never in between.

The loop dispatches steps without waiting for the devices; `StepLog.flush` fetches the
dispatched steps' metrics, checks that each step's loss, gradient norm and applied update are
finite (`nonfinite`) and writes the log lines. The hooks call it at the end of each log window,
and before an eval, a save or the end, so that non-finite weights stop the run before they
reach a checkpoint (training/trainer.register_hooks).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import jax

from mypt_jax.data.batching import BatchInfo
from mypt_jax.model.config import ModelConfig
from mypt_jax.training.compilation.shape_plan import step_flops
from mypt_jax.training.observe.metrics import MetricsWriter
from mypt_jax.training.observe.step_stats import StepWindow

# (metric, its name in the stop message), in the order they are checked: a non-finite loss
# makes the gradient and the update non-finite too, so the first one found is the cause.
FINITE_CHECKS = (("train_loss", "train loss"), ("grad_norm", "gradient norm"),
                 ("update_norm", "optimizer update norm"))


def nonfinite(metrics: dict[str, float]) -> tuple[str, float] | None:
    """(what, value) of a train step's first non-finite check, or None when all three are
    finite: then so are the weights the step wrote (train_step.update_norm)."""
    for key, what in FINITE_CHECKS:
        if not math.isfinite(metrics[key]):
            return what, metrics[key]
    return None


class StepLog:
    def __init__(self, writer: MetricsWriter, model_config: ModelConfig, *, log_interval: int,
                 max_iters: int, on_nan: Callable[[str, float, int], None],
                 input_wait: Callable[[], float]):
        self.writer, self.model_config = writer, model_config
        self.log_interval, self.max_iters = log_interval, max_iters
        self.on_nan = on_nan  # (what, value, step): stops the run
        self.input_wait = input_wait  # seconds the loop waited for batches since the last call
        self.pending: list[tuple[int, Any, BatchInfo]] = []  # dispatched, not fetched
        self.window = StepWindow()
        self._losses: list[float] = []  # train losses since `take_train_loss` last ran
        self.rates: list[float] = []  # model FLOP/s of each log window
        self.step_times: list[float] = []  # seconds per step of each log window
        self.input_wait_s = 0.0  # the run's total

    def dispatched(self, step: int, metrics: Any, info: BatchInfo) -> None:
        self.pending.append((step, metrics, info))

    def flush(self) -> None:
        """Fetches the dispatched steps' metrics; one log line per window that ends in them."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        fetched = jax.device_get([m for _, m, _ in pending])
        for (step, _, info), metrics in zip(pending, fetched, strict=True):
            m = {k: float(v) for k, v in metrics.items()}
            bad = nonfinite(m)
            if bad is not None:
                self.on_nan(*bad, step)
            self.window.add(info)
            self._losses.append(m["train_loss"])
            if (step + 1) % self.log_interval == 0 or step + 1 == self.max_iters:
                self._line(step, m)

    def _line(self, step: int, m: dict[str, float]) -> None:
        shapes = [i.shape for i in self.window.infos]
        window = self.window.close()
        if window["step_time"] > 0 and shapes:
            flops = sum(step_flops(self.model_config, s) for s in shapes)
            self.rates.append(flops / (window["step_time"] * len(shapes)))
            self.step_times.append(window["step_time"])
        wait = self.input_wait()
        self.input_wait_s += wait
        record = {
            "iter": step, "train_loss": m["train_loss"], "lr": m["lr"],
            "grad_norm": m["grad_norm"], "loss_tokens": m["loss_tokens"], **window,
            "input_wait_s": wait,
        }
        self.writer.write(record)
        self.writer.scalars(step, {k: v for k, v in record.items() if k not in ("iter", "buckets")})
        self.writer.progress(step + 1, {"loss": f"{m['train_loss']:.4f}", "lr": f"{m['lr']:.2e}"})
        if not self.writer.interactive:
            self.writer.print(
                f"step {step}: train {m['train_loss']:.4f} | lr {m['lr']:.2e} | grad norm "
                f"{m['grad_norm']:.3f} | {record['tokens_per_s']:.0f} tok/s padded, "
                f"{record['real_tokens_per_s']:.0f} real, {record['trained_tokens_per_s']:.0f} "
                f"trained | {record['buckets'][-1]}"
            )

    def take_train_loss(self) -> float | None:
        """The mean train loss of the steps fetched since the last call (None: no step);
        the GOLD overfit guard compares an eval's val loss with it."""
        losses, self._losses = self._losses, []
        return sum(losses) / len(losses) if losses else None

    def steady(self) -> tuple[float | None, float | None]:
        """(seconds per step, model FLOP/s): medians over the log windows, evals and saves
        left out."""
        return (statistics.median(self.step_times) if self.step_times else None,
                statistics.median(self.rates) if self.rates else None)
