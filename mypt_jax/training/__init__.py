"""Training: the run config and what it starts from, the trainer and its jitted step, optimizer,
checkpoints, metrics, health checks and loss curves."""
