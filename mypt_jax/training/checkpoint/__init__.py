"""What a run writes to last: checkpoints, when to save and what stays, the run state, preemption."""
