"""Parallel: the mesh and its sharding rules, `jax.distributed`, device and host memory, stack size."""
