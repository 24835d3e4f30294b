"""What a run writes to last: checkpoints, their policy, the run state, exports."""
