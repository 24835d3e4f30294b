"""Curriculum: the Phase 3a phases end to end (generate, mix, prepare, train, test) and their summary.

`python -m mypt_jax.pipeline` is `pipeline.py`.
"""
