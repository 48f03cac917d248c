"""Replicas: sync rounds, intent-driven replica creation and dropping (NuPS, AdaPS).

A replica of key k on rank R is a copy that serves R's own reads and writes locally.
Writes accumulate in it; a *sync round* sends ``value - base`` of every replica written
since the last round to the owners, which add it and answer the fresh rows of the replicas
whose row changed (stamps); the replica keeps updates made while the round was in flight
(``ReplicaStore.refresh``). No delta is lost: a delta is either in
the replica (``value - base``) or in a SYNC/DROP message that the owner applies exactly
once (messages are forwarded and queued like pushes when the owner moves).

Adaptive placement (``_decide`` at the owner): a rank asks the owner for keys it intends
to use soon (INTENT) and marks them PENDING. If another rank uses a key too -- the owner
itself has an active intent, replicas exist, or did within the last clocks -- the owner
answers with a REPLICA.
Otherwise it hands the key over to the requester at once (TRANSFER, and an OWNER update
to the key's home); the requester queues requests for its PENDING keys until the
TRANSFER arrives, and requests that reach the old owner meanwhile follow its hint. The
count of replica holders and the relocation counter travel with the row.
"""

from __future__ import annotations

import numpy as np

from .handles import Handle
from .message import Msg
from .protocol import Tag
from .store import ABSENT, PENDING, TableState


SHARED_MEMORY = 2  # clocks an owner remembers that a key was shared


class ReplicaProtocol:
    """Mixin for Engine: the replica half of the protocol (lock held in every method)."""

    # ----- a rank's own requests served by its replicas --------------------------------
    def apply_replica(self, m, rslots: np.ndarray) -> None:
        rep = m.table.replicas
        if m.tag is Tag.PULL:
            self.send(self.rank, m.replace(rows=rep.value(rslots)), Tag.PULL_REPLY)
            return
        if m.tag is Tag.PUSH:
            rep.add(rslots, m.rows)
        else:
            rep.assign(rslots, m.rows)
        self.send(self.rank, m.replace(rows=None), Tag.WRITE_ACK)

    # ----- at the owner ------------------------------------------------------------------
    def apply_owner(self, m, slots: np.ndarray) -> None:
        """SYNC, DROP and INTENT requests for keys this rank owns."""
        t, store = m.table, m.table.store
        back = m.replace(hops=0)
        if m.tag is Tag.SYNC:
            self._sync_reply(m, slots)
        elif m.tag is Tag.DROP:
            store.add(slots, m.rows)
            t.holders[m.keys] = np.maximum(t.holders[m.keys] - 1, 0)
            self.send(m.origin, back.replace(rows=None), Tag.WRITE_ACK)
        elif m.tag is Tag.INTENT:
            self._decide(m, slots)

    def _decide(self, m, slots: np.ndarray) -> None:
        t = m.table
        if m.origin == self.rank:  # own intent came back after the key moved here
            self._answer(m.req, len(m.keys))
            return
        # Shared: the owner uses the key, replicas exist, or another rank had it
        # replicated within SHARED_MEMORY clocks (a hot key stays put and is copied,
        # instead of moving to each rank that asks first in a quiet moment).
        shared = ((t.intent_end[m.keys] > self.clock) | (t.holders[m.keys] > 0)
                  | (t.shared_at[m.keys] + SHARED_MEMORY >= self.clock))
        replica = None
        if shared.any():
            keys = m.keys[shared]
            t.holders[keys] += 1
            t.shared_at[keys] = self.clock
            replica = m.subset(shared).replace(hops=0, rows=t.store.values[slots[shared]],
                                               pos=t.stamps(keys, slots[shared]))
        if shared.all():
            self.send(m.origin, replica, Tag.REPLICA)
            return
        moved = self.hand_over(m.subset(~shared), slots[~shared], m.origin,
                               send=replica is None)
        if replica is not None:  # one message for both answers
            self.send(m.origin, moved.replace(
                tag=Tag.GRANT, keys=np.concatenate([moved.keys, replica.keys]),
                pos=np.concatenate([moved.pos, replica.pos]),
                rows=np.concatenate([moved.rows, replica.rows]), aux=len(moved.keys)))

    # ----- at the requester: answers to INTENT, SYNC ----------------------------------------
    def on_replica(self, m) -> None:
        t, rep = m.table, m.table.replicas
        owned = t.store.slot[m.keys] >= 0
        if owned.any():  # became the owner meanwhile: it holds no replica after all
            k = m.keys[owned]
            t.holders[k] = np.maximum(t.holders[k] - 1, 0)
        rslots = rep.slot[m.keys]
        new = ~owned & (rslots == PENDING)
        if new.any():
            rep.install(m.keys[new], m.rows[new], m.pos[new])
            self.stats["replicas_created"] += int(np.count_nonzero(new))
        orphan = ~owned & (rslots == ABSENT)
        if orphan.any():  # owned and given away again meanwhile: undo the holder count
            k = m.keys[orphan]
            self.drop(t, k, np.zeros((len(k), t.spec.width), np.float32))
        self._answer(m.req, len(m.keys))
        self.drain(t, m.keys)

    def on_sync_reply(self, m) -> None:
        changed = len(m.rows)  # the first keys; the other rows are as this rank has them
        m.table.replicas.refresh(m.keys[:changed], m.rows, m.pos[:changed])
        self._answer(m.req, len(m.keys))

    # ----- actions a rank starts ---------------------------------------------------------------
    def request(self, t: TableState, keys: np.ndarray) -> Handle:
        """Send INTENT for keys this rank neither owns, expects, nor replicates."""
        t.replicas.slot[keys] = PENDING
        h = self.new_handle("intent", t, len(keys))
        self.serve(self.msg(Tag.INTENT, t, h, keys))
        return h

    def drop(self, t: TableState, keys: np.ndarray, residual: np.ndarray | None = None) -> Handle:
        """Drop ready replicas of ``keys``; their unsynced updates go to the owner (a write)."""
        if residual is None:
            residual = t.replicas.remove(keys)
            self.stats["replicas_dropped"] += len(keys)
        h = self.new_handle("drop", t, len(keys), keys=keys)
        t.pending_writes.append(h)
        self.serve(self.msg(Tag.DROP, t, h, keys, residual))
        return h

    def start_sync(self, t: TableState) -> Handle | None:
        """One sync round over all ready replicas of ``t``; None if it has none.

        Deltas travel only for replicas written since the last round; for the others
        only the key and the stamp of the row the replica copies.
        """
        keys, stamps, deltas = t.replicas.take_deltas()
        if not len(keys):
            return None
        h = self.new_handle("sync", t, len(keys), keys=keys)
        h.started = self.clock
        self.stats["sync_rounds"] += 1
        self.serve(self.msg(Tag.SYNC, t, h, keys, deltas, pos=stamps))
        return h

    def _sync_reply(self, m, slots: np.ndarray) -> None:
        """At the owner: add the SYNC's deltas, answer the rows that changed since the
        replica copied them (stamps differ), changed keys first."""
        t, store = m.table, m.table.store
        written = len(m.rows)
        store.add(slots[:written], m.rows)
        stamps = t.stamps(m.keys, slots)
        changed = stamps != m.pos
        changed[:written] = True
        order = np.concatenate([np.flatnonzero(changed), np.flatnonzero(~changed)])
        rows = store.values[slots[order[:int(np.count_nonzero(changed))]]]
        self.send(m.origin, m.replace(hops=0, keys=m.keys[order], pos=stamps[order],
                                      rows=rows), Tag.SYNC_REPLY)

    def merge_own_replicas(self, t: TableState, keys, rows, holders):
        """At a TRANSFER: fold this rank's replica of a key into the arriving row."""
        holders = np.array(holders, np.int64)
        if t.replicas is None:
            return rows, holders
        rslots = t.replicas.slot[keys]
        ready = rslots >= 0
        if ready.any():
            rows = np.array(rows)
            rows[ready] += t.replicas.remove(keys[ready])
            holders[ready] -= 1  # it was counted as a holder; it is the owner now
            self.stats["replicas_dropped"] += int(np.count_nonzero(ready))
        t.replicas.slot[keys[rslots == PENDING]] = ABSENT
        return rows, np.maximum(holders, 0)

    def msg(self, tag, t, h, keys, rows=None, pos=None):
        pos = np.zeros(len(keys), np.int64) if pos is None else pos
        return Msg(tag, t, h.id, self.rank, keys, pos, rows)
