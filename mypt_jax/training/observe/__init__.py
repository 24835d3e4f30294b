"""What a run reports: the log, step rates, where the time went, the profiler, plots."""
