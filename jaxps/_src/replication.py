"""Replicas: sync rounds, intent-driven replica creation and dropping (NuPS, AdaPS).

A replica of key k on rank R is a copy that serves R's own reads and writes locally.
Writes accumulate in it; a *sync round* sends ``value - base`` of every replica written
since the last round to the owners, which add it and answer the fresh rows of the replicas
whose row changed (stamps); the replica keeps updates made while the round was in flight
(``ReplicaStore.refresh``). No delta is lost: a delta is either in
the replica (``value - base``) or in a SYNC/DROP message that the owner applies exactly
once (messages are forwarded and queued like pushes when the owner moves).

Intent-driven placement (``_decide`` at the owner): a rank asks the owner for keys it
intends to use soon (INTENT, ``PolicyView.request``) and marks them PENDING. The owner's
technique decides per key (``Technique.decide_at_owner``): a REPLICA (adaptive: another
rank uses the key too), or it hands the key over to the requester at once (TRANSFER,
and an OWNER update to the key's home); the requester queues requests for its PENDING keys until the
TRANSFER arrives, and requests that reach the old owner meanwhile follow its hint. The
count of replica holders and the relocation counter travel with the row.
"""

from __future__ import annotations

import numpy as np

from .engine import USER_TAGS
from .errors import ProtocolError
from .handles import Handle
from .message import Msg
from .protocol import Tag
from .relocation import RelocatingEngine
from .store import ABSENT, PENDING, TableState


class ReplicatingEngine(RelocatingEngine):
    """The engine with replicas: INTENT, REPLICA, GRANT, SYNC, SYNC_REPLY and DROP (lock
    held in every method). The server builds this one for every technique; tables whose
    technique never replicates have no ReplicaStore, and these paths stay idle."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        for tag in (Tag.SYNC, Tag.DROP, Tag.INTENT):
            self.handlers[tag] = self._on_request
        self.handlers.update({Tag.SYNC_REPLY: self._on_sync_reply_msg,
                              Tag.REPLICA: self._on_replica_msg, Tag.GRANT: self._on_grant})
        self.owned.update({Tag.SYNC: self._sync_reply, Tag.DROP: self._apply_drop,
                           Tag.INTENT: self._decide})
        # The technique's owner-side choice (set by the server; lock held):
        # ``decide(table, keys, origin)`` -> mask of requested keys to replicate to origin
        # (the others are handed over).
        self.decide = lambda table, keys, origin: np.zeros(len(keys), bool)

    # ----- where keys are: the replica cases of the engine's classification ---------------
    def _sort(self, m: Msg, slots: np.ndarray):
        own, local, wait = super()._sort(m, slots)
        t = m.table
        if t.replicas is None:
            return own, local, wait
        rslots = t.replicas.slot[m.keys]
        if m.origin == self.rank and m.tag in USER_TAGS:
            local = ~own & (rslots >= 0)
            wait = wait & ~local
        # A PENDING key may be on its way here (the owner chose to move it); the rank's
        # own INTENT for it must travel, of course.
        if not (m.tag is Tag.INTENT and m.origin == self.rank):
            wait = wait | (~own & (rslots == PENDING))
        return own, local, wait

    def _absent(self, t, keys):
        absent = super()._absent(t, keys)
        if t.replicas is not None:
            # Replicated keys are local already; PENDING ones are being decided (replica
            # or move). Moving a replicated key here would also have to merge the replica
            # with the arriving row while its last sync is in flight, where own reads were
            # seen to lag (docs/design.md, known limits).
            absent &= t.replicas.slot[keys] == ABSENT
        return absent

    def _expects_transfer(self, t, keys):
        expected = super()._expects_transfer(t, keys)
        if t.replicas is not None:  # moved here after an INTENT
            expected |= t.replicas.slot[keys] == PENDING
        return expected

    # ----- a rank's own requests served by its replicas --------------------------------
    def _serve_local(self, m) -> None:
        rep = m.table.replicas
        rslots = rep.slot[m.keys]
        if m.tag is Tag.PULL:
            self.send(self.rank, m.replace(rows=rep.value(rslots)), Tag.PULL_REPLY)
            return
        if m.tag is Tag.PUSH:
            rep.add(rslots, m.rows)
        else:
            rep.assign(rslots, m.rows)
        self.send(self.rank, m.replace(rows=None), Tag.WRITE_ACK)

    # ----- at the owner ------------------------------------------------------------------
    def _apply_drop(self, m, slots: np.ndarray) -> None:
        t = m.table
        t.store.add(slots, m.rows)
        t.holders[m.keys] = np.maximum(t.holders[m.keys] - 1, 0)
        self.send(m.origin, m.replace(rows=None, hops=0), Tag.WRITE_ACK)

    def _decide(self, m, slots: np.ndarray) -> None:
        t = m.table
        if m.origin == self.rank:  # own intent came back after the key moved here
            self._answer(m.req, len(m.keys))
            return
        shared = np.asarray(self.decide(t.name, m.keys, m.origin), bool)
        if shared.shape != m.keys.shape:
            raise ProtocolError(f"decide_at_owner returned a mask of shape {shared.shape} "
                                f"for {len(m.keys)} keys of {t.name!r}")
        replica = None
        if shared.any():
            keys = m.keys[shared]
            t.holders[keys] += 1
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
    def _on_sync_reply_msg(self, source: int, m: Msg) -> None:
        self._learn_owner(m.table, m.keys, source)  # where the next sync goes
        self.on_sync_reply(m)
        self.on_ack()

    def _on_replica_msg(self, source: int, m: Msg) -> None:
        self._learn_owner(m.table, m.keys, source)
        self.on_replica(m)

    def _on_grant(self, source: int, m: Msg) -> None:
        """A TRANSFER (the first AUX keys) and a REPLICA (the rest) in one message."""
        moved = slice(0, m.aux)
        copied = slice(m.aux, len(m.keys))
        self._learn_owner(m.table, m.keys[copied], source)
        self.on_replica(Msg(Tag.REPLICA, m.table, m.req, m.origin, m.keys[copied],
                            m.pos[copied], m.rows[copied]))
        self._on_transfer(Msg(Tag.TRANSFER, m.table, m.req, m.origin, m.keys[moved],
                              m.pos[moved], m.rows[moved]))

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

    def _merge_arriving(self, t: TableState, keys, rows, holders):
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
