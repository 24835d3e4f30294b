"""Multi-host start: join the other processes through `jax.distributed.initialize` when asked to.

Every host runs the same command. `maybe_initialize()` must run before anything touches a
JAX backend (`jax.devices()`, creating an array, jit): afterwards the device set is fixed
and joining is impossible.

When the environment says so, `auto` joins:
- `JAX_COORDINATOR_ADDRESS=host:port` with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (ours;
  jax itself reads only the address);
- SLURM (`SLURM_NTASKS` > 1) and Open MPI (`OMPI_COMM_WORLD_SIZE` > 1), which jax detects.
A Cloud TPU slice is detected by jax only through the metadata server, which we do not query
on every start: pass `force=True` (the trainer's `--distributed`) on TPU pods.

The known trap (jax#22436): started on one TPU worker only, `initialize` waits for the
others until `initialization_timeout`, then fails; the error we raise says so.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
HANG_HINT = (
    "every process must run the same command at the same time: on a TPU slice use "
    "`gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all --command=...` (started on one "
    "worker only, the others never join: jax#22436); check that the coordinator address is "
    "reachable from every host and that JAX_NUM_PROCESSES is the real number of processes"
)


class DistributedError(RuntimeError):
    pass


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}: expected an integer, got {value!r}") from None


def requested(env: Mapping[str, str] | None = None) -> dict | None:
    """The initialize() kwargs the environment asks for, or None for a single process."""
    env = os.environ if env is None else env
    if env.get(ENV_ADDRESS):
        num, pid = _int_env(env, ENV_NUM_PROCESSES), _int_env(env, ENV_PROCESS_ID)
        missing = [n for n, v in ((ENV_NUM_PROCESSES, num), (ENV_PROCESS_ID, pid)) if v is None]
        if missing:
            raise DistributedError(
                f"{ENV_ADDRESS} is set ({env[ENV_ADDRESS]}) but {' and '.join(missing)} "
                "is not; set all three, or unset it for a single-process run"
            )
        if not 0 <= pid < num:
            raise DistributedError(f"{ENV_PROCESS_ID}: {pid} is not in [0, {ENV_NUM_PROCESSES}={num})")
        return {"coordinator_address": env[ENV_ADDRESS], "num_processes": num, "process_id": pid}
    for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if (_int_env(env, count_var) or 1) > 1:
            return {}  # jax's own cluster detection fills in everything
    return None


def maybe_initialize(force: bool = False, *, timeout_s: int = 300, **kwargs) -> bool:
    """Joins the distributed runtime if the environment (or `force`) says so; True if joined.

    Explicit `kwargs` (coordinator_address, num_processes, process_id, ...) win over the
    environment. Safe to call twice.
    """
    import jax
    from jax._src import xla_bridge  # no public "is a backend up yet?" in jax 0.10.2

    if jax.distributed.is_initialized():
        return True
    params = dict(kwargs) if kwargs else requested()
    if params is None:
        if not force:
            return False
        params = {}
    if xla_bridge.backends_are_initialized():
        raise DistributedError(
            "jax.distributed.initialize must run before any other JAX call, but a backend is "
            "already initialized; call mypt_jax.parallel.distributed.maybe_initialize() first thing"
        )
    where = params.get("coordinator_address", "auto-detected coordinator")
    print(f"joining {params.get('num_processes', '?')} processes at {where} "
          f"(waits up to {timeout_s}s for all of them)", file=sys.stderr, flush=True)
    # A missing peer makes jax abort the process at the deadline (a C++ fatal error that no
    # except clause sees), so the hint is printed just before that happens.
    warn = threading.Timer(max(timeout_s - 2, 1), lambda: print(
        f"still waiting for the other processes (deadline {timeout_s}s); {HANG_HINT}",
        file=sys.stderr, flush=True))
    warn.daemon = True
    warn.start()
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **params)
    except (RuntimeError, ValueError) as e:  # jaxlib raises XlaRuntimeError(RuntimeError)
        raise DistributedError(f"jax.distributed.initialize failed: {e}\nhint: {HANG_HINT}") from e
    finally:
        warn.cancel()
    return True
