"""Before the first step: the config and its eval sets, init weights, resume, agreement between processes."""
