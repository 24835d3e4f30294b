"""Which upstream's training-loop semantics a run follows: the one place that answers it.

`upstream_semantics` is "24cc3fc" (the seed-era upstream's loop, which is ours) or "dc62a0c"
(the newer upstream's `fit()`). Under dc62a0c, measured by running it:
- the step's loss is the mean of its microbatches' means (ours: one token-weighted mean);
- evals read batches of the microbatch size (ours: the whole update's rows);
- every eval scores masked-token accuracy on eval_iters microbatches drawn from the training
  stream and eval_iters more from the val stream, so the batches trained on move on by
  eval_iters microbatches per eval, and the val stream by 2 x eval_iters.
Its cosine schedule to 10% of the peak is a config field (`lr_schedule`, `min_lr`), set by
the upstream command line (interop/upstream_cli.py).

The train stream's position is counted in draws: a draw is a microbatch under dc62a0c (an
update reads grad_accum_steps of them, an eval eval_iters), a whole update's batch otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

CHOICES = ("24cc3fc", "dc62a0c")


def newer(c) -> bool:
    return c.upstream_semantics == "dc62a0c"


def microbatch_means(c) -> bool:
    """The step's loss is the mean of its microbatch means (one microbatch: the same loss)."""
    return newer(c) and c.grad_accum_steps > 1


def micro_rows(c) -> int:
    return c.batch_size // c.grad_accum_steps


def eval_rows(c) -> int:
    """Rows of one eval batch (val, eval sets, accuracy)."""
    return micro_rows(c) if newer(c) else c.batch_size


def draw_rows(c) -> int:
    """Rows of one draw of the train stream (the unit of its position)."""
    return micro_rows(c) if newer(c) else c.batch_size


def draws_per_update(c) -> int:
    return c.grad_accum_steps if newer(c) else 1


def accuracy_on(c) -> bool:
    """Masked-token accuracy is scored at evals (the upstream's is None without a mask)."""
    return c.token_accuracy or c.saturation_check or (newer(c) and c.use_loss_mask)


def train_draws_per_eval(c) -> int:
    """Train-stream draws an eval takes (the upstream draws them with or without a mask)."""
    return c.eval_iters if newer(c) else 0


def val_draws_per_eval(c) -> int:
    return 2 * c.eval_iters if newer(c) else c.eval_iters


def train_positions(c, start: int, position: int, eval_pending: bool) -> Callable[[int], int]:
    """Update u (u >= start) -> the train-stream draw its batch starts at, given the stream's
    `position` before update `start` and whether the eval of step `start` is still to run.
    An eval at step s runs before update s (trainer.register_hooks), so every eval at a
    step in [start, u] (the one at `start` only if pending) comes before update u."""
    per_update, per_eval, interval = draws_per_update(c), train_draws_per_eval(c), c.eval_interval

    def evals_through(u: int) -> int:
        n = u // interval - start // interval  # evals at steps in (start, u]
        return n + int(eval_pending and start % interval == 0)

    return lambda u: position + (u - start) * per_update + evals_through(u) * per_eval


def eval_steps(c) -> list[int]:
    """The steps a run from step 0 evaluates: 0, eval_interval, ..., and the final one."""
    return [*range(0, c.max_iters, c.eval_interval), c.max_iters]


def val_positions(c) -> list[int]:
    """The val-stream window start of every eval's val loss in a run from step 0."""
    return [k * val_draws_per_eval(c) for k in range(len(eval_steps(c)))]
