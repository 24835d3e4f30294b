"""Training: the loop at the top (trainer, hooks, startup) over its parts: setup, step,
compilation, checkpoint, evals, observe (docs/architecture.md)."""
