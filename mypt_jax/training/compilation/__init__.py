"""Every program the run needs, planned by shape and compiled before step 0 or behind the steps."""
