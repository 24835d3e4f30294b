"""Preflight: chips, topologies, compiled programs, HLO cost, the phase estimate and the report.

`python -m mypt_jax.preflight` is `report.py`.
"""
