"""Before the first step: config, init weights, resume, agreement between processes."""
