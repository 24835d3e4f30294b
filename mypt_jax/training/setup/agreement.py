"""Processes agree before the first collective, or all of them stop with one error.

Each process reads its own workdir and its own copy of the dataset. If they disagree (a
local `runs/x` on every worker of a pod, a dataset copied partly to one worker), they
compile different programs or restore different steps and then wait for each other in a
collective forever. So before anything is restored, every process:

1. checks that it sees the marker process 0 has just written into the workdir (a random
   token, new at every start): the workdir is one shared place;
2. sends process 0 its resume step, a hash of the resolved config and the dataset
   fingerprint; the first field where any process differs is the error on every process,
   naming the field, process 0's value and the processes that differ.

Each exchange is one `process_allgather` of a few integers, so a disagreement fails in
seconds. `check_values` is the second exchange alone, for what a process computes later from
those inputs (the shape plan, before anything compiles).
"""

from __future__ import annotations

import secrets

import numpy as np

MARKER = ".mypt_jax_process0"
_HASH_HEX = 15  # 60 bits: fits an int64 without its sign bit


class HostsDisagree(Exception):
    """Processes of one run see different workdirs, checkpoints, configs or datasets."""


def _as_int(value: str | int) -> int:
    return value if isinstance(value, int) else int(value[:_HASH_HEX], 16)


def _workdir_seen(workdir) -> bool:
    import jax
    from jax.experimental import multihost_utils

    token_1 = np.frombuffer(secrets.token_bytes(8), np.int64) & np.int64(2**62 - 1)
    token = int(multihost_utils.broadcast_one_to_all(token_1)[0])
    marker = workdir / MARKER
    if jax.process_index() == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(token))
    multihost_utils.sync_global_devices("mypt_jax workdir marker written")
    try:
        return marker.read_text().strip() == str(token)
    except OSError:
        return False


def check(workdir, fields: dict[str, str | int]) -> None:
    """Raises HostsDisagree on every process if any process differs from process 0.

    `fields` maps a name to an int (shown as is) or a hex digest (compared by its first 60
    bits); every process must pass the same names in the same order.
    """
    import jax

    if jax.process_count() == 1:
        return
    seen_P = _gather([int(_workdir_seen(workdir))])[:, 0]
    if not seen_P.all():
        blind = np.flatnonzero(seen_P == 0).tolist()
        raise HostsDisagree(
            f"workdir {workdir}: process(es) {blind} do not see the marker process 0 wrote "
            f"there ({MARKER}); every process of a run needs the same workdir: a gs:// bucket or "
            "a shared filesystem, not a local directory on each host")
    check_values(fields, "every host must see the same workdir, config and dataset files")


def _show(number, like: str | int) -> str:
    if isinstance(like, int):
        return "none" if number < 0 else str(int(number))
    return f"{int(number):0{_HASH_HEX}x}"


def check_values(fields: dict[str, str | int], hint: str) -> None:
    """`check` without the workdir marker: raises HostsDisagree on every process naming the
    first field where any process differs from process 0, then `hint` (what to fix)."""
    import jax

    if jax.process_count() == 1:
        return
    table_PF = _gather([_as_int(v) for v in fields.values()])
    for i, (name, value) in enumerate(fields.items()):
        differ = np.flatnonzero(table_PF[:, i] != table_PF[0, i]).tolist()
        if differ:
            theirs = ", ".join(f"process {p}: {_show(table_PF[p, i], value)}" for p in differ)
            raise HostsDisagree(f"processes disagree on {name}: process 0 has "
                                f"{_show(table_PF[0, i], value)}, {theirs}; {hint}")


def _gather(values: list[int]):
    """Every process's `values` (int64 table, a row per process). Each value travels as the
    bits of two int32 words (as `compile_plan.process0_cost` sends its floats): jax keeps int32
    on device unless x64 is on, which would cut a 60-bit hash."""
    from jax.experimental import multihost_utils

    words = np.array(values, np.int64).view(np.int32)
    words_PW = np.asarray(multihost_utils.process_allgather(words), np.int32)
    return np.ascontiguousarray(words_PW).view(np.int64)
