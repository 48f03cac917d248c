"""``Msg``: a PS message being processed (decoded from an envelope, or built locally)."""

from __future__ import annotations

import numpy as np

from .protocol import Tag

_KEEP = object()  # Msg.replace: leave rows as they are


class Msg:
    """A request or reply being processed: a decoded message (or one built locally).

    A plain slotted class rather than a dataclass: ``replace`` runs for nearly every
    message, and ``dataclasses.replace`` cost more than the rest of a small message's
    handling.
    """

    __slots__ = ("tag", "table", "req", "origin", "keys", "pos", "rows", "hops", "aux")

    def __init__(self, tag: Tag, table, req: int, origin: int, keys: np.ndarray,
                 pos: np.ndarray, rows: np.ndarray | None = None, hops: int = 0, aux: int = -1):
        self.tag, self.table, self.req, self.origin = tag, table, req, origin
        self.keys, self.pos, self.rows, self.hops, self.aux = keys, pos, rows, hops, aux

    def replace(self, *, tag=None, keys=None, pos=None, rows=_KEEP, hops=None, aux=None):
        """A copy with the given fields changed (``rows=None`` drops the rows)."""
        return Msg(self.tag if tag is None else tag, self.table, self.req, self.origin,
                   self.keys if keys is None else keys, self.pos if pos is None else pos,
                   self.rows if rows is _KEEP else rows, self.hops if hops is None else hops,
                   self.aux if aux is None else aux)

    def subset(self, sel: np.ndarray) -> "Msg":
        """The keys ``sel`` (a boolean mask or an index array) with their pos and rows.

        Rows may cover only the first ``len(rows)`` keys (SYNC: the written replicas);
        the subset keeps that form: its keys with rows first.
        """
        rows = self.rows
        if rows is None or len(rows) == len(self.keys):
            return Msg(self.tag, self.table, self.req, self.origin, self.keys[sel],
                       self.pos[sel], None if rows is None else rows[sel], self.hops, self.aux)
        idx = np.flatnonzero(sel) if sel.dtype == bool else sel
        has_row = idx < len(rows)
        idx = np.concatenate([idx[has_row], idx[~has_row]])
        return Msg(self.tag, self.table, self.req, self.origin, self.keys[idx], self.pos[idx],
                   rows[idx[:int(np.count_nonzero(has_row))]], self.hops, self.aux)
