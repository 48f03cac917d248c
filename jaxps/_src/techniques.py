"""The static and Lapse-style techniques, written against ``PolicyView`` alone.

| technique   | placement                                                         |
|-------------|-------------------------------------------------------------------|
| classic     | key k on rank k % size forever                                    |
| replication | every rank holds every key (replicas synced in rounds)            |
| relocation  | Lapse: ``localize``/intents move keys to the rank that uses them   |
| nups        | NuPS: a static hot set replicated everywhere, the rest relocated  |
| adaptive    | AdaPS (``adaptive.py``): per key and over time, from intents      |
| lockstep    | as classic; the trainer's steps move rows in collectives          |

The protocol engine is the same for all of them: "classic" is just the policy that never
moves or copies a key.
"""

from __future__ import annotations

import heapq

import numpy as np

from . import uniq
from .errors import InputError
from .policy import Technique

TECHNIQUES = ("classic", "replication", "relocation", "nups", "adaptive", "lockstep")


class Classic(Technique):
    """Static partitioning: key k lives on rank k % size; intents and localize are ignored."""

    name = "classic"


class Replication(Technique):
    """Full static replication: every rank holds every key. Pulls and pushes are local;
    deltas reach the owners (and the other replicas) in sync rounds. Memory: the whole
    table (twice: value and last-synced base) on every rank."""

    name = "replication"
    replicates = True

    def setup(self, view):
        for table, spec in view.tables.items():
            view.replicate(table, np.arange(spec.num_keys))


class IntentBook:
    """Intents not acted upon yet, in a heap by start clock: signalling intents for clocks
    far ahead costs O(log n) each, and a clock tick looks only at the intents now due."""

    def __init__(self):
        self._heap: list = []  # (start, seq, end, table, keys)
        self._seq = 0          # ties: arrival order (and never compares the arrays)

    def add(self, table: str, keys: np.ndarray, start: int, end: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (start, self._seq, end, table, keys))

    def pop_due(self, clock: int, horizon: int) -> list[tuple[str, np.ndarray, int]]:
        """(table, keys, end) of the intents starting within ``horizon`` clocks that have
        not already ended, removed from the book."""
        due = []
        while self._heap and self._heap[0][0] <= clock + horizon:
            _, _, end, table, keys = heapq.heappop(self._heap)
            if end > clock:
                due.append((table, keys, end))
        return due


def merge_keys(due) -> dict[str, np.ndarray]:
    """Unique keys per table of ``IntentBook.pop_due``'s intents."""
    parts: dict[str, list[np.ndarray]] = {}
    for table, keys, _ in due:
        parts.setdefault(table, []).append(keys)
    # Each intent's keys are unique already: only a merge needs a unique.
    return {table: p[0] if len(p) == 1 else uniq.unique(np.concatenate(p))
            for table, p in parts.items()}


class LapseState:
    """Per-server state of Relocation and Nups: the intent book, and per table a mask
    of keys that never move (NuPS's hot set, replicated everywhere)."""

    def __init__(self, fixed: dict[str, np.ndarray] | None = None):
        self.book = IntentBook()
        self.fixed = fixed or {}

    def movable(self, table: str, keys: np.ndarray) -> np.ndarray:
        mask = self.fixed.get(table)
        return keys if mask is None else keys[~mask[keys]]


class Relocation(Technique):
    """Lapse: dynamic allocation. ``localize`` moves keys here; an intent localizes its keys
    once its start is within ``horizon`` clocks (default 1: act for the next batch now)."""

    name = "relocation"
    relocates = True

    def __init__(self, horizon: int = 1):
        self.horizon = horizon

    def setup(self, view):
        return LapseState()

    def localize(self, view, state, table, keys):
        return view.localize(table, keys)

    def on_intent(self, view, state, table, keys, start, end):
        state.book.add(table, keys, start, end)
        self.on_clock(view, state, view.clock)

    def on_clock(self, view, state, clock):
        for table, keys in merge_keys(state.book.pop_due(clock, self.horizon)).items():
            keys = state.movable(table, keys)
            if len(keys):
                view.localize(table, keys)


class Nups(Relocation):
    """NuPS: a static hot set replicated on every rank, every other key relocated by
    ``localize`` and intents (as "relocation").

    Args:
      hot_keys: table name -> keys to replicate; or
      access_counts: table name -> int array [num_keys] of (expected) accesses, and
        ``hot_fraction`` (default 0.01) of each table's keys, the most accessed, is hot.
        Tables named in neither have no hot set.
    """

    name = "nups"
    replicates = True

    def __init__(self, hot_keys: dict | None = None, access_counts: dict | None = None,
                 hot_fraction: float = 0.01, horizon: int = 1):
        super().__init__(horizon)
        if not 0 <= hot_fraction <= 1:
            raise InputError(f"hot_fraction must be in [0, 1], got {hot_fraction}")
        self._hot_keys = dict(hot_keys or {})
        self._counts = dict(access_counts or {})
        self.hot_fraction = hot_fraction

    def setup(self, view):
        tables, fixed = view.tables, {}
        for name in set(self._hot_keys) | set(self._counts):
            if name not in tables:
                raise InputError(f"Nups: unknown table {name!r}; tables are {sorted(tables)}")
            num_keys = tables[name].num_keys
            if name in self._hot_keys:
                hot = view.check_keys(name, self._hot_keys[name], "hot_keys")
            else:
                counts = np.asarray(self._counts[name])
                if counts.shape != (num_keys,):
                    raise InputError(f"table {name!r}: access_counts must have shape "
                                     f"({num_keys},), got {counts.shape}")
                n_hot = int(round(self.hot_fraction * num_keys))
                hot = np.sort(np.argsort(-counts, kind="stable")[:n_hot])
            fixed[name] = np.zeros(num_keys, bool)
            fixed[name][hot] = True
            view.replicate(name, hot)
        return LapseState(fixed)
