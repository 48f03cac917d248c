"""A rank's own reads and writes: the local fast paths, and the read-your-writes fence.

Most of a trainer's pulls and pushes touch only keys this rank owns or replicates: they
are answered here, with the lock held once and no message, and without boolean-mask copies
of the rows. The rest becomes one request, served by the engine like any other.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .handles import Handle, completed
from .message import Msg
from .protocol import Tag
from .replication import ReplicatingEngine
from .store import TableState


def start_pull(eng: ReplicatingEngine, t: TableState, keys: np.ndarray,
               out: np.ndarray) -> Handle:
    """Pull validated ``keys`` into ``out`` (float32 [n, width]); lock taken here.
    Precondition: ``fence`` ran for these keys."""
    stats = eng.stats
    with eng.lock:
        slots = t.store.slot[keys]
        local = slots >= 0
        if local.all():
            stats["pull_local"] += len(keys)
            np.take(t.store.values, slots, axis=0, out=out, mode="clip")
            return completed("pull", t.name, out)
        # Integer positions, not boolean masks: each mask indexing of rows is a copy.
        other = np.flatnonzero(~local)
        if t.replicas is not None:  # owned or ready replicas only: answer here
            rslots = t.replicas.slot[keys[other]]
            if (rslots >= 0).all():
                if owned_first(local, other):
                    # The trainer orders a call's keys owned first (ParameterServer.
                    # _local_first): two gathers straight into the two parts of ``out``.
                    n = len(keys) - len(other)
                    np.take(t.store.values, slots[:n], axis=0, out=out[:n])
                    t.replicas.read_into(rslots, out[n:])
                else:
                    # One gather of every position (a replicated key's slot, < 0, reads a
                    # clipped row that the next line overwrites): cheaper than gathering
                    # the owned rows into a copy and scattering it into ``out``.
                    np.take(t.store.values, slots, axis=0, out=out, mode="clip")
                    out[other] = t.replicas.value(rslots)
                stats["pull_local"] += len(keys)
                return completed("pull", t.name, out)
        own = np.flatnonzero(local)
        out[own] = t.store.values[slots[own]]
        _count_local(stats, "pull", t, keys, local)
        # The rest travels (replicas among it answer inline, in serve).
        h = eng.new_handle("pull", t, len(other), result=out)
        eng.serve(Msg(Tag.PULL, t, h.id, eng.rank, keys[other], other))
        if eng.transport is not None:
            eng.flush()
    return h


def write(eng: ReplicatingEngine, tag: Tag, t: TableState, keys: np.ndarray,
          rows: np.ndarray, *, fenced: bool) -> Handle:
    """PUSH (add) or SET ``rows`` for validated unique ``keys``; lock taken here.
    ``fenced``: keys can move, so a remote write is remembered for ``fence``."""
    kind = "push" if tag is Tag.PUSH else "set"
    stats = eng.stats
    with eng.lock:
        slots = t.store.slot[keys]
        local = slots >= 0
        if local.all():  # the common case: no boolean-mask copies of the rows
            if tag is Tag.PUSH:
                t.store.add(slots, rows)
            else:
                t.store.assign(slots, rows)
            stats["push_local"] += len(keys)
            return completed(kind, t.name)
        own, other = np.flatnonzero(local), np.flatnonzero(~local)
        if t.replicas is not None:  # owned or ready replicas only: apply here
            rslots = t.replicas.slot[keys[other]]
            if (rslots >= 0).all():
                if owned_first(local, other):
                    # Owned keys first (the trainer's order): the rows' two parts are
                    # slices, not the two copies ``rows[own]`` and ``rows[other]``.
                    n = len(own)
                    own_slots, own_rows, replica_rows = slots[:n], rows[:n], rows[n:]
                else:
                    own_slots, own_rows, replica_rows = slots[own], rows[own], rows[other]
                if tag is Tag.PUSH:
                    t.store.add(own_slots, own_rows)
                    t.replicas.add(rslots, replica_rows)
                else:
                    t.store.assign(own_slots, own_rows)
                    t.replicas.assign(rslots, replica_rows)
                stats["push_local"] += len(keys)
                return completed(kind, t.name)
        if tag is Tag.PUSH:
            t.store.add(slots[own], rows[own])
        else:
            t.store.assign(slots[own], rows[own])
        _count_local(stats, "push", t, keys, local)
        # The rest travels (replicas among it apply inline, in serve).
        h = eng.new_handle(kind, t, len(other), keys=keys[other])
        eng.serve(Msg(tag, t, h.id, eng.rank, keys[other], other, rows[other]))
        if eng.transport is not None:
            eng.flush()
        if fenced and not h.done():
            t.pending_writes.append(h)
    return h


def fence(eng: ReplicatingEngine, t: TableState, keys: np.ndarray,
          wait: Callable[[Handle], object]) -> None:
    """Read-your-writes when keys move: wait for own in-flight writes to these keys.

    A write and a later read can take different routes once a key has moved (the
    read may go straight to the new owner while the write is still being
    forwarded), so a read waits for the acknowledgement of overlapping writes.
    The same holds for the deltas of a sync round in flight once the key is no longer
    replicated here (it became owned, or its replica was dropped).
    """
    sync = t.sync
    if not t.pending_writes and (sync is None or sync.done()):
        return
    with eng.lock:
        overlapping = [h for h in t.writes_in_flight() if t.member(h.keys, keys).any()]
        if sync is not None and not sync.done():
            unreplicated = keys[t.replicas.slot[keys] < 0]
            if t.member(sync.keys, unreplicated).any():
                overlapping.append(sync)
    for h in overlapping:
        wait(h)


def _count_local(stats: dict, op: str, t: TableState, keys: np.ndarray,
                 local: np.ndarray) -> None:
    """Stats: keys served locally = owned or replicated here at call time."""
    if t.replicas is not None:
        local = local | (t.replicas.slot[keys] >= 0)
    n_local = int(np.count_nonzero(local))
    stats[f"{op}_local"] += n_local
    stats[f"{op}_remote"] += len(keys) - n_local


def owned_first(local: np.ndarray, other: np.ndarray) -> bool:
    """Whether the keys this rank owns (``local``) all come before the others (``other``:
    the positions of the rest, increasing)."""
    return not len(other) or other[0] == len(local) - len(other)
