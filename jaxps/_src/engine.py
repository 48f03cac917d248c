"""The protocol engine's core: handles, sending, one handler table, serving requests.

Every request is served the same way by whichever rank receives it, split over its keys
with vectorized masks (``_sort``, the one classification, used by ``serve`` and ``drain``):

  * keys this rank owns are applied now and answered to the origin;
  * keys this rank's own replicas serve (its own reads and writes; ``replication.py``);
  * keys this rank is waiting for (INCOMING, or a replica PENDING) are queued, in
    arrival order, and applied when their rows arrive -- so no update is lost while a
    key is in transfer;
  * all other keys are forwarded: to the location hint, or to the key's home rank,
    which always knows the current owner. After ``MAX_HOPS`` forwards a request goes
    to the home, so stale hints cannot make it circle.

The layers above add their tags to the two tables: ``handlers`` (every received tag ->
``handler(source, msg)``; request tags -> ``serve``) and ``owned`` (request tag ->
``apply(msg, slots)`` for the keys this rank owns): ``relocation.py`` (LOCALIZE,
RELOCATE, TRANSFER, OWNER) and ``replication.py`` (INTENT, REPLICA, GRANT, SYNC,
SYNC_REPLY, DROP) subclass this engine, each adding to what is below it.

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
from .store import INCOMING, TableState

MAX_HOPS = 4
USER_TAGS = frozenset({Tag.PULL, Tag.PUSH, Tag.SET})  # requests a rank's own replicas serve
# Requests whose sender blocks until they are answered: the transport stays quick for them.
URGENT = frozenset({Tag.PULL, Tag.LOCALIZE, Tag.RELOCATE})
_TAGS = {int(tag): tag for tag in Tag}  # a dict lookup costs a tenth of Tag(int)


class Engine:
    """Per-rank protocol state machine: static placement (key k on rank k % size) and the
    user's requests. Used through its subclasses; not public."""

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
        self.handlers = {tag: self._on_request for tag in (Tag.PULL, Tag.PUSH, Tag.SET)}
        self.handlers.update({Tag.PULL_REPLY: self._on_pull_reply,
                              Tag.WRITE_ACK: self._on_write_ack})
        self.owned = {Tag.PULL: self._apply_pull, Tag.PUSH: self._apply_write,
                      Tag.SET: self._apply_write}
        # Called (lock held) after a write or sync of this rank was acknowledged (the
        # technique's on_ack: adaptive retries requests that waited for one).
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

    def poll(self) -> None:
        """Transport callback, once per round: sends what PS calls queued without
        sending (``intent``); the relocating engine adds batched OWNER updates."""
        if self._out:
            with self.lock:
                self.flush()

    # ----- receiving ---------------------------------------------------------------
    def on_envelope(self, source: int, buf: np.ndarray) -> None:
        """Transport callback: handle every message of an envelope, in order, then send
        the replies (one envelope per destination)."""
        tables = self.tables
        with self.lock:
            for header, mbuf in protocol.messages(buf, self.widths):
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
        handler = self.handlers.get(m.tag)
        if handler is None:
            raise ProtocolError(f"rank {self.rank}: unexpected tag {m.tag!r}")
        with self.lock:
            handler(source, m)

    def _on_request(self, source: int, m: Msg) -> None:
        self.serve(m)

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

    # ----- serving requests ----------------------------------------------------------
    def serve(self, m: Msg) -> None:
        """Apply owned keys, use own replicas, queue keys in transfer, forward the rest.

        Precondition: lock held. A rank's replicas serve only its own reads and writes;
        requests from other ranks always go to the owner.
        """
        slots = m.table.store.slot[m.keys]
        own = slots >= 0
        if own.all():
            self.owned[m.tag](m, slots)
            return
        own, local, wait = self._sort(m, slots)
        if own.any():
            self.owned[m.tag](m.subset(own), slots[own])
        if local is not None and local.any():
            self._serve_local(m.subset(local))
            own = own | local
        if wait.any():
            m.table.queue.append(m.subset(wait))
        rest = ~(own | wait)
        if rest.any():
            self._forward(m.subset(rest))

    def _sort(self, m: Msg, slots: np.ndarray):
        """Masks (own, local, wait) over ``m.keys``: owned here; served by this rank's own
        replicas (None: no replicas); to be queued until their rows arrive. The rest is
        forwarded. Subclasses refine it; ``serve`` and ``drain`` both use it."""
        return slots >= 0, None, slots == INCOMING

    def _serve_local(self, m: Msg) -> None:
        raise ProtocolError(f"rank {self.rank}: no replicas to serve {m.tag!r}")

    def _apply_pull(self, m: Msg, slots: np.ndarray) -> None:
        self.send(m.origin, m.replace(rows=m.table.store.values[slots], hops=0),
                  Tag.PULL_REPLY)

    def _apply_write(self, m: Msg, slots: np.ndarray) -> None:
        if m.tag is Tag.PUSH:
            m.table.store.add(slots, m.rows)
        else:
            m.table.store.assign(slots, m.rows)
        self.send(m.origin, m.replace(rows=None, hops=0), Tag.WRITE_ACK)

    def _forward(self, m: Msg) -> None:
        """Send keys this rank neither owns nor expects towards their owner: the hint,
        else the home, which knows the owner (itself, if home: then ``owner``)."""
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

    def drain(self, t: TableState, arrived: np.ndarray) -> None:
        """Re-serve queued requests that touch ``arrived`` keys, keeping queue order.

        A queued request that still has keys to wait for keeps its place (those keys),
        so two requests for the same key are always applied in the order they arrived.
        """
        queue, t.queue = t.queue, []
        hit = [t.member(q.keys, arrived).any() for q in queue]
        for q, touched in zip(queue, hit):
            if not touched:
                t.queue.append(q)
                continue
            _, _, waiting = self._sort(q, t.store.slot[q.keys])
            if waiting.any():
                t.queue.append(q.subset(waiting))
            if not waiting.all():
                # Owned or replicated now (applied), or already handed on (forwarded).
                self.serve(q.subset(~waiting))
