"""One process's failure stops every process of the run, promptly, with its exit code.

Without this, a process that fails alone (process 0's log or export I/O, a compile, a dataset
missing on one host) exits, and the others wait in their next collective until jax's
heartbeat gives up minutes later, then die with a code the launchers do not rerun. So:
- the failing process writes its exit code and its one-line error into the coordination
  service's key-value store (`report`); the first report wins, so a process that failed
  *because* another did exits with the first one's code;
- every process runs a daemon thread (`watch`) that waits on that key and, when it appears,
  prints whose failure it was and ends the process with the same code (`os._exit`: the main
  thread may be blocked inside a collective, where no Python exception reaches it);
- process 0, which hosts the coordination service, leaves last (`leave`).

Exit 75 (preempted) is not reported: every process reaches it at the same step by itself.
The launchers then rerun what is meant to be rerun (75, 74) on every host alike.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import time

FAILED_KEY = "mypt_jax/failed"
_ACK_KEY = "mypt_jax/failed_ack/"
_POLL_S = 1.0  # how soon the others learn of a failure
_ACK_WAIT_S = 10.0  # process 0 waits this long, at most, for the others to leave first
_EXIT_GRACE_S = 0.5
NOT_REPORTED = (0, 75)
_LOCK = threading.Lock()
_FAILING = False


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def joined() -> bool:
    """Whether this process is one of several joined by jax.distributed."""
    import jax

    return _client() is not None and jax.process_count() > 1


def watch() -> bool:
    """Starts this process's watcher thread (a no-op outside a multi-process run). It is
    stopped at exit before jax's own shutdown (atexit runs last-registered first), so no call
    of it is in flight when the client closes."""
    import jax

    if not joined():
        return False
    stop = threading.Event()
    thread = threading.Thread(target=_wait_for_failure, args=(jax.process_index(), stop),
                              daemon=True, name="mypt_jax host failure watch")
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(timeout=2 * _POLL_S)

    atexit.register(end)
    return True


def _wait_for_failure(me: int, stop: threading.Event) -> None:
    client = _client()
    while not stop.wait(_POLL_S):
        try:
            value = client.key_value_try_get(FAILED_KEY)
            break
        except Exception as e:  # one exception type for "not there yet" and for a shutdown
            if "NOT_FOUND" not in str(e):
                return  # the client is closing: the run is ending anyway
    else:
        return
    failure = json.loads(value)
    with _LOCK:
        if _FAILING or failure["process"] == me:
            return  # this process fails by itself (all do, on an agreed error): it says so
        print(f"error: process {failure['process']} failed (exit {failure['code']}): "
              f"{failure['line']}; this process stops too", file=sys.stderr, flush=True)
        leave(int(failure["code"]))


def failing() -> None:
    """This process fails by itself and reports it: from now on its watcher stays quiet, so
    the user sees one error line per process."""
    global _FAILING
    with _LOCK:
        _FAILING = True


def report(code: int, line: str) -> int:
    """Tells the other processes this one fails with `code`; returns the code to exit with
    (the first report's, if another process failed first). A no-op for one process."""
    import jax

    if not joined() or code in NOT_REPORTED:
        return code
    client, me = _client(), jax.process_index()
    try:
        client.key_value_set(FAILED_KEY, json.dumps({"process": me, "code": code,
                                                     "line": line[-2000:]}))
    except Exception:  # another process reported first: exit as it does
        try:
            code = int(json.loads(client.blocking_key_value_get(FAILED_KEY, 1_000))["code"])
        except Exception:
            pass
    return code


def leave(code: int) -> None:
    """Ends this process of a failed run with `code`, now. Process 0 hosts the coordination
    service, so it goes last: a process whose service vanishes is aborted by jax (-6) before
    it can exit with its own code. The others say they are leaving, then leave."""
    import jax

    client, me = _client(), jax.process_index()
    with contextlib.suppress(Exception):
        client.key_value_set(f"{_ACK_KEY}{me}", "1")
    if me == 0:
        deadline = time.monotonic() + _ACK_WAIT_S
        for other in range(1, jax.process_count()):
            with contextlib.suppress(Exception):
                left_ms = max(int((deadline - time.monotonic()) * 1000), 1)
                client.blocking_key_value_get(f"{_ACK_KEY}{other}", left_ms)
        time.sleep(_EXIT_GRACE_S)  # their acknowledgement came just before their exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
