"""The protocol engine: serves requests, forwards them, relocates keys (Lapse).

Every request (pull, push, set, relocate) is served the same way by whichever rank
receives it, split over its keys with vectorized masks:

  * keys this rank owns are applied now and answered to the origin;
  * keys this rank is waiting for (INCOMING) are queued, in arrival order, and applied
    when their rows arrive -- so no update is lost while a key is in transfer;
  * all other keys are forwarded: to the location hint, or to the key's home rank,
    which always knows the current owner. After ``MAX_HOPS`` forwards a request goes
    to the home, so stale hints cannot make it circle.

Relocation (``localize``) is requester -> home -> owner -> requester: three messages on
the way, plus an OWNER update from the old owner to the home. An owner that decides by
itself to hand a key over (adaptive, on an INTENT) sends it straight to the requester:
two messages on the way. Either way the old owner leaves a hint pointing to the new
owner and tells the home, with the key's relocation counter, which travels with the row;
the home keeps the newest update it has seen (as the reference implementation does), so
what it knows is never older than a hand-over it was told about, and a request it
forwards follows the hints of the hand-overs after that to the key.

Concurrency: all state is guarded by one re-entrant lock, taken by the user's thread
for its operations and by whichever thread handles a received envelope. Messages a rank
sends to itself are dispatched inline. Messages to other ranks are collected per
destination and leave as one envelope per destination at ``flush`` (end of a PS call, of
a handled envelope, or of a transport round for messages a call deferred).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from . import protocol
from .errors import ProtocolError
from .handles import Handle
from .message import Msg
from .protocol import H, Tag
from .replication import ReplicaProtocol
from .store import ABSENT, INCOMING, PENDING, TableState

MAX_HOPS = 4
OWNER_BATCH_S = 2e-3  # how long OWNER updates wait to be sent together
USER_TAGS = frozenset({Tag.PULL, Tag.PUSH, Tag.SET})  # requests a rank's own replicas serve
# Requests whose sender blocks until they are answered: the transport stays quick for them.
URGENT = frozenset({Tag.PULL, Tag.LOCALIZE, Tag.RELOCATE})
_TAGS = {int(tag): tag for tag in Tag}  # a dict lookup costs a tenth of Tag(int)


class Engine(ReplicaProtocol):
    """Per-rank protocol state machine. Used by ParameterServer; not public.

    Replica handling (sync, intents, replica creation and dropping) lives in
    ``ReplicaProtocol``; this class routes requests and relocates keys.
    """

    def __init__(self, tables: list[TableState], rank: int, size: int, stats: dict):
        self.tables = tables
        self.rank, self.size = rank, size
        self.stats = stats
        self.lock = threading.RLock()
        self.handles: dict[int, Handle] = {}
        self._next_req = 0
        self.clock = 0         # this rank's clock (owner-side intent decisions read it)
        self.transport = None  # set by the server when size > 1
        self._out: dict[int, list[np.ndarray]] = {}  # dest -> packed messages to send
        self.widths = [t.spec.width for t in tables]
        self._handlers = {
            **{tag: (lambda source, m: self.serve(m)) for tag in protocol.REQUESTS},
            Tag.PULL_REPLY: self._on_pull_reply, Tag.WRITE_ACK: self._on_write_ack,
            Tag.LOCALIZE: lambda source, m: self._on_localize(m),
            Tag.OWNER: lambda source, m: self._on_owner(m),
            Tag.TRANSFER: lambda source, m: self._on_transfer(m),
            Tag.SYNC_REPLY: self._on_sync_reply_msg, Tag.REPLICA: self._on_replica_msg,
            Tag.GRANT: self._on_grant}
        self._owner_updates: list[Msg] = []  # OWNER messages batched (OWNER_BATCH_S)
        self._owner_since = 0.0
        # Called (lock held) after a write or sync of this rank was acknowledged; the
        # adaptive technique retries requests that waited for one.
        self.on_ack = lambda: None

    # ----- handles -----------------------------------------------------------------
    def new_handle(self, kind: str, t: TableState, remaining: int, **kw) -> Handle:
        """Register a handle whose answers will arrive as messages (lock held)."""
        self._next_req += 1
        h = Handle(self._next_req, kind, t.name, remaining, **kw)
        if remaining:
            self.handles[h.id] = h
        return h

    def _answer(self, req: int, n: int) -> Handle:
        h = self.handles.get(req)
        if h is None:
            raise ProtocolError(f"rank {self.rank}: answer for unknown request {req}")
        if h._answer(n):
            del self.handles[req]
        return h

    # ----- sending -----------------------------------------------------------------
    def send(self, dest: int, m: Msg, tag: Tag | None = None) -> None:
        """Send ``m`` (with ``tag`` if given) to ``dest``: dispatched inline when dest is
        this rank, else queued for ``flush`` (lock held)."""
        tag = m.tag if tag is None else tag
        if dest == self.rank:
            self.dispatch(self.rank, m.replace(tag=tag))
            return
        buf = protocol.pack(m.table.index, m.req, m.origin, m.keys, m.pos, m.rows,
                            hops=m.hops, aux=m.aux, tag=int(tag))
        out = self._out.get(dest)
        if out is None:
            self._out[dest] = [buf]
        else:
            out.append(buf)

    def flush(self) -> None:
        """Send what ``send`` queued: one envelope per destination (lock held)."""
        if self._out:
            out, self._out = self._out, {}
            for dest, parts in out.items():
                self.transport.post(dest, parts)

    @property
    def has_unsent(self) -> bool:
        """Messages wait for ``flush`` (a hint read without the lock)."""
        return bool(self._out)

    def send_grouped(self, dest: np.ndarray, m: Msg) -> None:
        """Split ``m`` by destination rank: one message per destination."""
        if len(dest) and (dest == dest[0]).all():
            self.send(int(dest[0]), m)
            return
        order = np.argsort(dest, kind="stable")
        ranks, starts = np.unique(dest[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        for r, a, b in zip(ranks, starts, bounds):
            self.send(int(r), m.subset(order[a:b]))

    # ----- receiving ---------------------------------------------------------------
    def on_envelope(self, source: int, buf: np.ndarray) -> None:
        """Transport callback: handle every message of an envelope, in order, then send
        the replies (one envelope per destination)."""
        tables, widths = self.tables, self.widths
        with self.lock:
            for header, mbuf in protocol.messages(buf, widths):
                tag = _TAGS[header[H.TAG]]
                if tag in URGENT:
                    self.transport.urgent_at = time.monotonic()
                t = tables[header[H.TABLE]]
                _, keys, pos, rows = protocol.unpack(
                    mbuf, t.spec.width if tag in protocol.CARRIES_ROWS else None)
                self.dispatch(source, Msg(tag, t, header[H.REQ], header[H.ORIGIN], keys, pos,
                                          rows, header[H.HOPS], header[H.AUX]))
            self.flush()

    def dispatch(self, source: int, m: Msg) -> None:
        """Handle one message (lock held, or taken here for a message to oneself)."""
        handler = self._handlers.get(m.tag)
        if handler is None:
            raise ProtocolError(f"rank {self.rank}: unexpected tag {m.tag!r}")
        with self.lock:
            handler(source, m)

    def _on_pull_reply(self, source: int, m: Msg) -> None:
        self._learn_owner(m.table, m.keys, source)
        h = self.handles.get(m.req)
        if h is None:
            raise ProtocolError(f"rank {self.rank}: reply for unknown request {m.req}")
        h.result[m.pos] = m.rows
        self._answer(m.req, len(m.keys))

    def _on_write_ack(self, source: int, m: Msg) -> None:
        self._learn_owner(m.table, m.keys, source)
        self._answer(m.req, len(m.keys))
        self.on_ack()

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

    # ----- serving requests ----------------------------------------------------------
    def serve(self, m: Msg) -> None:
        """Apply owned keys, use own replicas, queue keys in transfer, forward the rest.

        Precondition: lock held. A rank's replicas serve only its own reads and writes;
        requests from other ranks always go to the owner.
        """
        t = m.table
        slots = t.store.slot[m.keys]
        own = slots >= 0
        if own.all():
            self._apply(m, slots)
            return
        if own.any():
            self._apply(m.subset(own), slots[own])
        wait = slots == INCOMING
        if m.tag is Tag.RELOCATE and m.aux == self.rank:
            # The hand-over to this rank itself: it chases the key, which is elsewhere.
            wait[:] = False
        if t.replicas is not None:
            rslots = t.replicas.slot[m.keys]
            if m.origin == self.rank and m.tag in USER_TAGS:
                ready = ~own & (rslots >= 0)
                if ready.any():
                    self.apply_replica(m.subset(ready), rslots[ready])
                    own |= ready
                    wait &= ~ready
            # A PENDING key may be on its way here (the owner chose to move it); the
            # rank's own INTENT for it must travel, of course.
            if not (m.tag is Tag.INTENT and m.origin == self.rank):
                wait |= ~own & (rslots == PENDING)
        if wait.any():
            t.queue.append(m.subset(wait))
        rest = ~(own | wait)
        if rest.any():
            self._forward(m.subset(rest))

    def _apply(self, m: Msg, slots: np.ndarray) -> None:
        store = m.table.store
        if m.tag is Tag.PULL:
            self.send(m.origin, m.replace(rows=store.values[slots], hops=0),
                      Tag.PULL_REPLY)
        elif m.tag is Tag.PUSH:
            store.add(slots, m.rows)
            self.send(m.origin, m.replace(rows=None, hops=0), Tag.WRITE_ACK)
        elif m.tag is Tag.SET:
            store.assign(slots, m.rows)
            self.send(m.origin, m.replace(rows=None, hops=0), Tag.WRITE_ACK)
        elif m.tag is Tag.RELOCATE:
            if m.aux == self.rank:
                raise ProtocolError(f"rank {self.rank}: asked to relocate key {m.keys[0]} "
                                    f"of {m.table.name!r} to itself, which owns it")
            self.hand_over(m, slots, m.aux)
        else:
            self.apply_owner(m, slots)

    def hand_over(self, m: Msg, slots: np.ndarray, to: int, *, send: bool = True) -> Msg:
        """Move owned keys ``m.keys`` (at ``slots``) to rank ``to``: TRANSFER the rows
        (answering request ``m.req`` there), leave a hint, tell the homes (lock held).

        Returns the TRANSFER; with ``send=False`` the caller sends it (in a GRANT)
        before anything else goes to ``to``.
        """
        t = m.table
        rows = t.store.remove(m.keys, slots)
        version = t.version[m.keys] + 1
        pos = protocol.versioned(version, t.holders[m.keys])
        t.holders[m.keys] = 0
        t.hint[m.keys] = to
        self.stats["relocations_out"] += len(m.keys)
        transfer = m.replace(tag=Tag.TRANSFER, rows=rows, pos=pos, hops=0)
        if send:
            self.send(to, transfer)
        update = Msg(Tag.OWNER, t, 0, self.rank, m.keys,
                     protocol.versioned(version, np.full(len(m.keys), to)))
        home = m.keys % self.size
        mine = home == self.rank
        if mine.any():
            self._on_owner(update.subset(mine))
        # A new owner that is the key's home updates its directory when the rows arrive
        # (``_on_transfer``): no OWNER message for those.
        rest = ~mine & (home != to)
        if rest.any():
            # Batched for OWNER_BATCH_S (or until the next clock tick): one message per
            # home instead of one per decision; meanwhile the hints route requests.
            if not self._owner_updates:
                self._owner_since = time.monotonic()
            self._owner_updates.append(update.subset(rest))
        return transfer

    def poll(self) -> None:
        """Transport callback, once per round: sends OWNER updates batched long enough,
        and messages a PS call queued without sending (``intent``)."""
        if self._owner_updates and time.monotonic() - self._owner_since >= OWNER_BATCH_S:
            with self.lock:
                self.flush_owner_updates()
                self.flush()
        elif self._out:
            with self.lock:
                self.flush()

    def flush_owner_updates(self) -> None:
        """Send the batched OWNER updates, one message per table and home (lock held)."""
        updates, self._owner_updates = self._owner_updates, []
        by_table: dict[int, list[Msg]] = {}
        for u in updates:
            by_table.setdefault(u.table.index, []).append(u)
        for parts in by_table.values():
            t = parts[0].table
            keys = np.concatenate([u.keys for u in parts])
            pos = np.concatenate([u.pos for u in parts])
            self.send_grouped((keys % self.size).astype(np.int32),
                              Msg(Tag.OWNER, t, 0, self.rank, keys, pos))

    def _on_owner(self, m: Msg) -> None:
        """At the home: new owners of ``m.keys``; an update older than one already seen
        (a lower relocation counter) is ignored."""
        t = m.table
        idx = m.keys // self.size
        version, owner = protocol.split_versioned(m.pos)
        newer = version > t.owner_version[idx]
        t.owner[idx[newer]] = owner[newer]
        t.owner_version[idx[newer]] = version[newer]

    def _forward(self, m: Msg) -> None:
        t = m.table
        home = (m.keys % self.size).astype(np.int32)
        if m.hops >= MAX_HOPS:
            dest = home
        else:
            dest = t.hint[m.keys]
            dest = np.where(dest == self.rank, home, dest)
        at_home = dest == self.rank
        if at_home.any():
            dest[at_home] = t.owner[m.keys[at_home] // self.size]
            if (dest == self.rank).any():
                k = m.keys[dest == self.rank][0]
                raise ProtocolError(f"rank {self.rank} is home and owner of key {k} of "
                                    f"{t.name!r} but neither holds nor expects it")
        if m.origin != self.rank:
            self.stats["forwards"] += len(m.keys)
        self.send_grouped(dest, m.replace(hops=m.hops + 1))

    def _learn_owner(self, t: TableState, keys: np.ndarray, source: int) -> None:
        if source != self.rank:
            t.hint[keys] = source

    # ----- relocation ----------------------------------------------------------------
    def localize(self, t: TableState, keys: np.ndarray) -> Handle:
        """Ask for ``keys`` (unique) to move here (lock held).

        Returns a handle answered once per key that had to move, as its rows arrive.
        """
        slots = t.store.slot[keys]
        absent = slots == ABSENT
        if t.replicas is not None:
            # Replicated keys are local already; PENDING ones are being decided (replica
            # or move). Moving a replicated key here would also have to merge the replica
            # with the arriving row while its last sync is in flight, where own reads were
            # seen to lag (docs/design.md, known limits).
            absent &= t.replicas.slot[keys] == ABSENT
        need = keys[absent]
        h = self.new_handle("localize", t, len(need))
        if len(need):
            # The home must learn of this rank's hand-overs before its LOCALIZE (FIFO).
            self.flush_owner_updates()
            t.store.slot[need] = INCOMING
            m = Msg(Tag.LOCALIZE, t, h.id, self.rank, need, np.zeros(len(need), np.int64),
                    aux=self.rank)
            self.send_grouped((need % self.size).astype(np.int32), m)
        return h

    def _on_localize(self, m: Msg) -> None:
        """At the home: tell the owner it knows of to hand the keys over to the requester.

        The requester's own OWNER updates reach the home before its LOCALIZE (per-pair
        FIFO), so the home never believes the requester owns a key it asks for.
        """
        t = m.table
        current = t.owner[m.keys // self.size]
        if (current == m.aux).any():
            k = m.keys[current == m.aux][0]
            raise ProtocolError(f"rank {m.aux} asked to localize key {k} of {t.name!r} "
                                f"it already owns or expects")
        self.send_grouped(current, m.replace(tag=Tag.RELOCATE, hops=0))

    def _on_transfer(self, m: Msg) -> None:
        """At the new owner: install rows, complete the localize, apply queued requests."""
        t = m.table
        expected = t.store.slot[m.keys] == INCOMING
        if t.replicas is not None:  # moved here after an INTENT
            expected |= t.replicas.slot[m.keys] == PENDING
        if not expected.all():
            raise ProtocolError(f"rank {self.rank}: unexpected transfer of {t.name!r} key "
                                f"{m.keys[~expected][0]}")
        version, holders = protocol.split_versioned(m.pos)
        home_here = m.keys % self.size == self.rank
        if home_here.any():  # the old owner sent no OWNER update to this home (hand_over)
            n = int(np.count_nonzero(home_here))
            self._on_owner(Msg(Tag.OWNER, t, 0, self.rank, m.keys[home_here], protocol.versioned(
                version[home_here], np.full(n, self.rank))))
        rows, holders = self.merge_own_replicas(t, m.keys, m.rows, holders)
        t.store.insert(m.keys, rows)
        t.holders[m.keys] = holders
        t.version[m.keys] = version
        t.hint[m.keys] = self.rank
        self.stats["relocations"] += len(m.keys)
        self._answer(m.req, len(m.keys))
        self.drain(t, m.keys)

    def drain(self, t: TableState, arrived: np.ndarray) -> None:
        """Re-serve queued requests that touch ``arrived`` keys, keeping queue order.

        A queued request that still has keys in transfer (or own requests for keys whose
        replica is pending) keeps its place, so two requests for the same key are always
        applied in the order they arrived.
        """
        queue, t.queue = t.queue, []
        hit = [t.member(q.keys, arrived).any() for q in queue]
        for q, touched in zip(queue, hit):
            if not touched:
                t.queue.append(q)
                continue
            slots = t.store.slot[q.keys]
            waiting = slots == INCOMING
            if t.replicas is not None:
                rslots = t.replicas.slot[q.keys]
                if q.origin == self.rank and q.tag in USER_TAGS:
                    waiting &= rslots < 0  # a ready replica serves it
                waiting |= (rslots == PENDING) & (slots < 0)
            if waiting.any():
                t.queue.append(q.subset(waiting))
            if not waiting.all():
                # Owned or replicated now (applied), or already handed on (forwarded).
                self.serve(q.subset(~waiting))
