"""Relocation (Lapse): keys move to the rank that uses them; the home tracks the owner.

``localize`` is requester -> home -> owner -> requester: three messages on the way, plus
an OWNER update from the old owner to the home. An owner that decides by itself to hand a
key over (on an INTENT, ``replication.py``) sends it straight to the requester: two
messages on the way. Either way the old owner leaves a hint pointing to the new owner
and tells the home, with the key's relocation counter, which travels with the row; the
home keeps the newest update it has seen (as the reference implementation does), so what
it knows is never older than a hand-over it was told about, and a request it forwards
follows the hints of the hand-overs after that to the key.

While a key is in transfer, requests for it queue at the new owner (INCOMING keys, see
``Engine._sort``) and are applied in arrival order once its rows are installed.
"""

from __future__ import annotations

import time

import numpy as np

from . import protocol
from .engine import Engine
from .errors import ProtocolError
from .handles import Handle
from .message import Msg
from .protocol import Tag
from .store import ABSENT, INCOMING, TableState

# How long OWNER updates wait to be sent together, unless a clock tick sends them first
# (meanwhile the old owner's hint routes requests for the key).
OWNER_BATCH_S = 2e-3


class RelocatingEngine(Engine):
    """The engine with LOCALIZE, RELOCATE, TRANSFER and OWNER (lock held in every method)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.handlers.update({Tag.RELOCATE: self._on_request,
                              Tag.LOCALIZE: lambda source, m: self._on_localize(m),
                              Tag.OWNER: lambda source, m: self._on_owner(m),
                              Tag.TRANSFER: lambda source, m: self._on_transfer(m)})
        self.owned[Tag.RELOCATE] = self._apply_relocate
        self._owner_updates: list[Msg] = []  # OWNER messages batched (OWNER_BATCH_S)
        self._owner_since = 0.0

    def _sort(self, m: Msg, slots: np.ndarray):
        own, local, wait = super()._sort(m, slots)
        if m.tag is Tag.RELOCATE and m.aux == self.rank:
            # The hand-over to this rank itself: it chases the key, which is elsewhere.
            wait = np.zeros_like(wait)
        return own, local, wait

    # ----- hooks the replicating engine refines ----------------------------------------
    def _absent(self, t: TableState, keys: np.ndarray) -> np.ndarray:
        """Mask: keys ``localize`` must ask for (neither here nor on their way)."""
        return t.store.slot[keys] == ABSENT

    def _expects_transfer(self, t: TableState, keys: np.ndarray) -> np.ndarray:
        return t.store.slot[keys] == INCOMING

    def _merge_arriving(self, t: TableState, keys, rows, holders):
        return rows, np.array(holders, np.int64)

    # ----- at the owner ----------------------------------------------------------------
    def _apply_relocate(self, m: Msg, slots: np.ndarray) -> None:
        if m.aux == self.rank:
            raise ProtocolError(f"rank {self.rank}: asked to relocate key {m.keys[0]} "
                                f"of {m.table.name!r} to itself, which owns it")
        self.hand_over(m, slots, m.aux)

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
        """Transport callback, once per round: also sends OWNER updates batched long
        enough."""
        if self._owner_updates and time.monotonic() - self._owner_since >= OWNER_BATCH_S:
            with self.lock:
                self.flush_owner_updates()
                self.flush()
        else:
            super().poll()

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

    # ----- at the requester and the home -----------------------------------------------
    def localize(self, t: TableState, keys: np.ndarray) -> Handle:
        """Ask for ``keys`` (unique) to move here (lock held).

        Returns a handle answered once per key that had to move, as its rows arrive.
        """
        need = keys[self._absent(t, keys)]
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
        expected = self._expects_transfer(t, m.keys)
        if not expected.all():
            raise ProtocolError(f"rank {self.rank}: unexpected transfer of {t.name!r} key "
                                f"{m.keys[~expected][0]}")
        version, holders = protocol.split_versioned(m.pos)
        home_here = m.keys % self.size == self.rank
        if home_here.any():  # the old owner sent no OWNER update to this home (hand_over)
            n = int(np.count_nonzero(home_here))
            self._on_owner(Msg(Tag.OWNER, t, 0, self.rank, m.keys[home_here], protocol.versioned(
                version[home_here], np.full(n, self.rank))))
        rows, holders = self._merge_arriving(t, m.keys, m.rows, holders)
        t.store.insert(m.keys, rows)
        t.holders[m.keys] = holders
        t.version[m.keys] = version
        t.hint[m.keys] = self.rank
        self.stats["relocations"] += len(m.keys)
        self._answer(m.req, len(m.keys))
        self.drain(t, m.keys)
