"""Training: the run config, the trainer and its jitted step, optimizer, checkpoints, metrics and
health checks."""
