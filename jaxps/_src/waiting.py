"""Waiting for PS operations: the waiting thread drives the transport itself."""

from __future__ import annotations

import time

from .handles import Handle
from .replication import ReplicatingEngine


def wait(eng: ReplicatingEngine, handle: Handle | None):
    """Block until ``handle`` completed; returns pulled rows for a pull, else None.

    While it waits, this thread receives and handles the PS's messages itself (the reply
    it waits for among them), instead of waking the transport thread for them. Time spent
    counts as ``wait_seconds`` and ``wait_<kind>_seconds``.
    """
    if handle is None:
        return None
    if not handle.done():
        t0 = time.perf_counter()
        transport = eng.transport
        if transport is None:
            handle._event.wait()
        else:
            if eng.has_unsent:
                with eng.lock:
                    eng.flush()
            transport.drive(handle.done, handle._event)
        dt = time.perf_counter() - t0
        eng.stats["wait_seconds"] += dt
        eng.stats[f"wait_{handle.kind}_seconds"] += dt
    return handle.result


def wait_all(eng: ReplicatingEngine) -> None:
    """Wait for every operation this rank has started (including technique actions)."""
    while True:
        with eng.lock:
            pending = list(eng.handles.values())
        if not pending:
            return
        for h in pending:
            wait(eng, h)


def barrier(eng: ReplicatingEngine) -> None:
    """Collective: wait for own operations, then for every rank to arrive (serving peers
    meanwhile: a blocking MPI_Barrier would not)."""
    with eng.lock:
        eng.flush_owner_updates()
        if eng.transport is not None:
            eng.flush()
    wait_all(eng)
    if eng.transport is not None:
        done = eng.transport.barrier()
        t0 = time.perf_counter()
        eng.transport.drive(done.is_set, done)
        dt = time.perf_counter() - t0
        eng.stats["wait_seconds"] += dt
        eng.stats["wait_barrier_seconds"] += dt
