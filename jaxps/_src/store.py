"""Per-rank storage of one table: the rows this rank owns, its home directory, location cache."""

from __future__ import annotations

import numpy as np

from .tables import TableSpec, initial_rows

ABSENT = -1    # slot value: this rank neither owns the key nor expects it
INCOMING = -2  # slot value: this rank asked for the key and waits for its TRANSFER
PENDING = -2   # replica slot value: a replica was asked for, its rows are not here yet

_INIT_CHUNK = 1 << 16  # keys per chunk when computing initial rows (bounds temporary memory)


class RowStore:
    """Rows owned by this rank, in a growable array with a free list.

    Fields:
      slot:   int32 [num_keys]   row index in ``values`` of an owned key, else ABSENT/INCOMING.
              4 bytes per key of directory; the rows themselves exist only for owned keys.
      values: float32 [capacity, width]  rows; capacity doubles when relocations fill it.
      key_of: int64 [capacity]  key stored in each slot, -1 for a free slot (so the held
              keys are listed in O(capacity), not O(num_keys): replicas are listed per clock).
      writes: int64 [capacity]  writes (``add``/``assign``) to each slot since its row was
              inserted. An owner's row changed since a replica copied it iff its stamp
              (``TableState.stamps``) differs; in a ReplicaStore, >0 means unsynced
              local writes.
    """

    def __init__(self, num_keys: int, width: int, capacity: int):
        self.slot = np.full(num_keys, ABSENT, np.int32)
        self.values = np.empty((max(capacity, 1), width), np.float32)
        self.key_of = np.full(len(self.values), -1, np.int64)
        self.writes = np.zeros(len(self.values), np.int64)
        self._free = np.arange(len(self.values) - 1, -1, -1, dtype=np.int32)  # stack, top at end
        self._n_free = len(self._free)

    @property
    def num_owned(self) -> int:
        return len(self.values) - self._n_free

    def owned_keys(self) -> np.ndarray:
        """All keys this rank holds (int64, sorted). O(capacity)."""
        return np.sort(self.key_of[self.key_of >= 0])

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Store rows for keys this rank does not hold yet (precondition: keys unique)."""
        slots = self._allocate(len(keys))
        self.values[slots] = rows
        self.slot[keys] = slots
        self.key_of[slots] = keys
        self.writes[slots] = 0

    def remove(self, keys: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Give up owned keys (with their ``slots``); returns their rows (a copy)."""
        rows = self.values[slots]
        self.slot[keys] = ABSENT
        self.key_of[slots] = -1
        self._release(slots)
        return rows

    def add(self, slots: np.ndarray, deltas: np.ndarray) -> None:
        """values[slots] += deltas. Precondition: slots unique (the server aggregates duplicates)."""
        slots = slots.astype(np.intp)  # numpy's own int32 -> intp conversion costs more
        if len(slots) and self.values.shape[1]:
            # Whole rows as single opaque items (``_items``): ~20% faster than
            # ``values[slots] += deltas`` for rows of 1 KB (17,000 rows: 3.2 ms, 3.9).
            rows = _items(self.values)[slots]
            _floats(rows, self.values.shape[1])[...] += deltas
            _items(self.values)[slots] = rows
        self.writes[slots] += 1

    def assign(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """values[slots] = rows. Precondition: slots unique."""
        slots = slots.astype(np.intp)
        self.values[slots] = rows
        self.writes[slots] += 1

    def _allocate(self, n: int) -> np.ndarray:
        if n > self._n_free:
            self._grow(n - self._n_free)
        self._n_free -= n
        return self._free[self._n_free:self._n_free + n].copy()

    def _release(self, slots: np.ndarray) -> None:
        n = len(slots)
        self._free[self._n_free:self._n_free + n] = slots
        self._n_free += n

    def _grow(self, need: int) -> None:
        old = len(self.values)
        new = max(2 * old, old + need)
        values = np.empty((new, self.values.shape[1]), np.float32)
        values[:old] = self.values
        self.values = values
        self.key_of = np.concatenate([self.key_of, np.full(new - old, -1, np.int64)])
        self.writes = np.concatenate([self.writes, np.zeros(new - old, np.int64)])
        free = np.empty(new, np.int32)
        free[:self._n_free] = self._free[:self._n_free]
        added = np.arange(new - 1, old - 1, -1, dtype=np.int32)
        free[self._n_free:self._n_free + len(added)] = added
        self._free = free
        self._n_free += len(added)


class ReplicaStore:
    """Replicas of keys owned elsewhere: the value this rank reads and writes, and the
    value at the last sync (``base``), in two arrays with the same slots.

    ``slot`` per key: >= 0 a ready replica, ABSENT, or PENDING (asked for, rows not here
    yet; the rank's own requests for the key wait in the table queue meanwhile).
    Sync: send ``value - base`` to the owner and set ``base = value``; on the owner's
    answer ``fresh``: ``value = fresh + (value - base)``, ``base = fresh``, which keeps
    local updates made while the sync was in flight.

    Only changed rows travel: a replica keeps the owner's *stamp* of the row its base
    copies (``TableState.stamps``), sends deltas only for replicas written since the last
    sync (``RowStore.writes`` > 0), and the owner answers rows only where its stamp differs.

    Why two arrays and not one row [value | base]: every operation here gathers and
    scatters whole rows of one of them as opaque items (``_items``), which numpy copies
    in one piece; half rows of a [value | base] row are copied element by element
    (8,000 replicas of 1 KB: a sync's refresh 2.9 ms instead of 7.8, its start 2.4
    instead of 4.0, a push 0.8 instead of 1.1).
    """

    def __init__(self, num_keys: int, width: int):
        self.width = width
        self._rows = RowStore(num_keys, width, capacity=16)  # the values, and the slots
        self._base = np.empty_like(self._rows.values)
        self._stamp = np.zeros(len(self._rows.values), np.int64)  # per slot

    @property
    def slot(self) -> np.ndarray:
        return self._rows.slot

    @property
    def count(self) -> int:
        return self._rows.num_owned

    def keys(self) -> np.ndarray:
        """Keys with a ready replica (sorted). O(replica capacity)."""
        return self._rows.owned_keys()

    def value(self, slots: np.ndarray) -> np.ndarray:
        return self._rows.values[slots]

    def read_into(self, slots: np.ndarray, out: np.ndarray) -> None:
        """``out[:] = value(slots)`` without a temporary (``out`` C-contiguous)."""
        np.take(self._rows.values, slots, axis=0, out=out)

    def add(self, slots: np.ndarray, deltas: np.ndarray) -> None:
        self._rows.add(slots, deltas)

    def assign(self, slots: np.ndarray, rows: np.ndarray) -> None:
        self._rows.assign(slots, rows)

    def install(self, keys: np.ndarray, fresh: np.ndarray, stamps) -> None:
        """New ready replicas with value = base = fresh, a copy of the owner's row at
        ``stamps`` (int64 per key, or one for all)."""
        self._rows.insert(keys, fresh)
        capacity = len(self._rows.values)
        if len(self._base) < capacity:  # the values grew: so do the base rows and stamps
            base = np.empty_like(self._rows.values)
            base[:len(self._base)] = self._base
            self._base = base
            self._stamp = np.resize(self._stamp, capacity)
        slots = self._rows.slot[keys]
        self._base[slots] = fresh
        self._stamp[slots] = stamps

    def take_deltas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start of a sync round: (keys, stamps, deltas) of all ready replicas, the
        ``len(deltas)`` written since the last round first; for those ``base = value``.
        """
        rows = self._rows
        held = np.flatnonzero(rows.key_of >= 0)
        dirty = rows.writes[held] > 0
        slots = np.concatenate([held[dirty], held[~dirty]])
        d = slots[:int(np.count_nonzero(dirty))]
        values, base = _items(rows.values)[d], _items(self._base)[d]
        delta = _floats(values, self.width) - _floats(base, self.width)
        _items(self._base)[d] = values
        rows.writes[d] = 0
        return rows.key_of[slots], self._stamp[slots], delta

    def refresh(self, keys: np.ndarray, fresh: np.ndarray, stamps: np.ndarray) -> None:
        """Apply the owner's answer to a sync (its rows at ``stamps``); keys no longer
        replicated are skipped."""
        slots = self._rows.slot[keys]
        ok = slots >= 0
        if not ok.all():
            slots, fresh, stamps = slots[ok], fresh[ok], stamps[ok]
        slots = slots.astype(np.intp)
        # value = fresh + (value - base): exact when there were no local writes (the
        # order of ``value += fresh - base`` rounded), then base = fresh.
        values = _items(self._rows.values)[slots]
        v = _floats(values, self.width)
        v -= _floats(_items(self._base)[slots], self.width)
        v += fresh
        _items(self._rows.values)[slots] = values
        _items(self._base)[slots] = _items(np.ascontiguousarray(fresh))
        self._stamp[slots] = stamps

    def remove(self, keys: np.ndarray) -> np.ndarray:
        """Drop ready replicas; returns their unsynced local updates ``value - base``."""
        slots = self._rows.slot[keys]
        base = self._base[slots]
        return self._rows.remove(keys, slots) - base


def _items(rows: np.ndarray) -> np.ndarray:
    """float32 [n, w] rows (C-contiguous, w >= 1) as n opaque items of 4 w bytes: a view.
    numpy gathers and scatters such items with one copy each, not element by element."""
    return rows.view(np.dtype((np.void, 4 * rows.shape[1])))[:, 0]


def _floats(items: np.ndarray, width: int) -> np.ndarray:
    """The float32 [n, width] view of ``_items`` (a gathered copy of them)."""
    return items.view(np.float32).reshape(len(items), width)


class TableState:
    """Everything one rank keeps about one table.

    Fields:
      store:   RowStore of owned rows.
      owner:   int32 [ceil(num_keys / size)]  for keys whose home is this rank
               (key k has home k % size, entry k // size): the owner as of the newest
               OWNER update; ``owner_version`` is that update's relocation counter
               (updates from different old owners can arrive out of order; older ones
               are ignored). The rank it names holds the key, or handed it on and
               left a hint, so a request forwarded there reaches the key.
      hint:    int32 [num_keys]  location cache: last known owner of each key (or the
               rank it was handed to). Only a hint: a stale entry costs a forward.
      queue:   requests for INCOMING keys, kept in arrival order until the rows arrive.
      pending_writes: this rank's unacknowledged remote writes (for read-your-writes).
      replicas: ReplicaStore, or None while the technique never replicates this table.
      holders: int16 [num_keys]  for owned keys: how many other ranks hold a replica
               (travels with the row on relocation; adaptive decisions use it).
      version: int32 [num_keys]  for owned keys: the relocation counter (times the
               key changed owner); travels with the row, +1 per hand-over.
      sync: the in-flight sync round of this table's replicas (a Handle) or None.
    """

    def __init__(self, name: str, index: int, spec: TableSpec, rank: int, size: int):
        self.name, self.index, self.spec = name, index, spec
        home_keys = np.arange(rank, spec.num_keys, size, dtype=np.int64)
        self.store = RowStore(spec.num_keys, spec.width, capacity=len(home_keys))
        for start in range(0, len(home_keys), _INIT_CHUNK):
            chunk = home_keys[start:start + _INIT_CHUNK]
            self.store.insert(chunk, initial_rows(spec, name, chunk))
        self.owner = np.full(len(home_keys), rank, np.int32)
        self.owner_version = np.zeros(len(home_keys), np.int32)
        self.hint = (np.arange(spec.num_keys, dtype=np.int64) % size).astype(np.int32)
        self.queue: list = []
        self.pending_writes: list = []
        self.replicas: ReplicaStore | None = None
        self.holders = np.zeros(spec.num_keys, np.int16)
        self.version = np.zeros(spec.num_keys, np.int32)
        self.sync = None
        self._mark = np.zeros(spec.num_keys, bool)

    def stamps(self, keys: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Owner side: for owned ``keys`` (at ``slots``), a stamp that differs from every
        earlier stamp of the key whenever its row changed: (relocation counter, writes
        since the row arrived here). The counter grows at every hand-over, so stamps of
        different owners never collide (writes wrap after 2**32 in one stay). Lock held."""
        return (self.version[keys].astype(np.int64) << 32) | (self.store.writes[slots]
                                                             & 0xFFFFFFFF)

    def writes_in_flight(self) -> list:
        """This rank's unacknowledged remote writes (handles); drops finished ones. Lock held."""
        self.pending_writes = [h for h in self.pending_writes if not h.done()]
        return self.pending_writes

    def member(self, keys: np.ndarray, of: np.ndarray) -> np.ndarray:
        """Boolean mask: ``keys[i] in of``. O(len(keys) + len(of)) via a scratch array
        (np.isin sorts, which dominated small-message handling). Lock held."""
        self._mark[of] = True
        out = self._mark[keys]
        self._mark[of] = False
        return out

    def enable_replicas(self) -> ReplicaStore:
        if self.replicas is None:
            self.replicas = ReplicaStore(self.spec.num_keys, self.spec.width)
        return self.replicas
