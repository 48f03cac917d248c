"""Management techniques as policy objects behind one interface.

A technique decides what the PS does with intents, clock ticks and ``localize``, and
which keys are replicated. The protocol engine is the same for all of them: "classic"
is just the policy that never moves or copies a key.

| technique   | placement                                                         |
|-------------|-------------------------------------------------------------------|
| classic     | key k on rank k % size forever                                    |
| replication | every rank holds every key (replicas synced each clock)           |
| relocation  | Lapse: ``localize``/intents move keys to the rank that uses them   |
| nups        | NuPS: a static hot set replicated everywhere, the rest relocated  |
| adaptive    | AdaPS: per key and over time, from intents: relocate if one rank  |
|             | intends it, replicate if several do, act just early enough        |
"""

from __future__ import annotations

import heapq
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .tables import initial_rows

if TYPE_CHECKING:
    from .server import ParameterServer
    from .store import TableState

TECHNIQUES = ("classic", "replication", "relocation", "nups", "adaptive")


class Technique:
    """Interface. Methods are called with the PS lock held.

    ``relocates``: keys can change owner, so reads fence on own in-flight writes.
    ``replicates``: replicas exist, so the PS runs sync rounds and ``wait_sync`` syncs.
    """

    name = "?"
    relocates = False
    replicates = False

    def setup(self, ps: "ParameterServer") -> None:
        """Called once after the tables exist (static replicas are made here)."""

    def localize(self, ps: "ParameterServer", t: "TableState", keys: np.ndarray):
        """Handle a user ``localize``; returns a handle or None (ignored)."""
        return None

    def on_intent(self, ps: "ParameterServer", t: "TableState", keys: np.ndarray,
                  start: int, end: int) -> None:
        """A worker declared it will access ``keys`` (unique) during its clocks [start, end)."""

    def on_clock(self, ps: "ParameterServer", clock: int) -> None:
        """This rank's clock advanced to ``clock``."""


class Classic(Technique):
    """Static partitioning: key k lives on rank k % size; intents and localize are ignored."""

    name = "classic"


class Replication(Technique):
    """Full static replication: every rank holds every key. Pulls and pushes are local;
    deltas reach the owners (and the other replicas) in sync rounds. Memory: the whole
    table (twice: value and last-synced base) on every rank."""

    name = "replication"
    replicates = True

    def setup(self, ps):
        for t in ps._engine.tables:
            _replicate_statically(ps, t, np.arange(t.spec.num_keys))


class _IntentBook:
    """Intents not acted upon yet, in a heap by start clock: signalling intents for clocks
    far ahead costs O(log n) each, and a clock tick looks only at the intents now due."""

    def __init__(self):
        self._heap: list = []  # (start, seq, end, table index, keys)
        self._seq = 0          # ties: arrival order (and never compares the arrays)

    def add(self, t, keys, start, end) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (start, self._seq, end, t.index, keys))

    def pop_due(self, clock: int, horizon: int) -> list[tuple[int, np.ndarray, int]]:
        """(table index, keys, end) of the intents starting within ``horizon`` clocks that
        have not already ended, removed from the book."""
        due = []
        while self._heap and self._heap[0][0] <= clock + horizon:
            _, _, end, index, keys = heapq.heappop(self._heap)
            if end > clock:
                due.append((index, keys, end))
        return due


def _merge_keys(due) -> dict[int, np.ndarray]:
    """Unique keys per table index of ``pop_due``'s intents."""
    parts: dict[int, list[np.ndarray]] = {}
    for index, keys, _ in due:
        parts.setdefault(index, []).append(keys)
    # Each intent's keys are unique already: only a merge needs np.unique.
    return {index: p[0] if len(p) == 1 else np.unique(np.concatenate(p))
            for index, p in parts.items()}


class Relocation(Technique):
    """Lapse: dynamic allocation. ``localize`` moves keys here; an intent localizes its keys
    once its start is within ``horizon`` clocks (default 1: act for the next batch now)."""

    name = "relocation"
    relocates = True

    def __init__(self, horizon: int = 1):
        self.horizon = horizon
        self._book = _IntentBook()

    def localize(self, ps, t, keys):
        return ps._engine.localize(t, keys)

    def on_intent(self, ps, t, keys, start, end):
        self._book.add(t, keys, start, end)
        self.on_clock(ps, ps.clock)

    def on_clock(self, ps, clock):
        for index, keys in _merge_keys(self._book.pop_due(clock, self.horizon)).items():
            t = ps._engine.tables[index]
            keys = self._movable(t, keys)
            if len(keys):
                ps._engine.localize(t, keys)

    def _movable(self, t, keys):
        return keys


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
        self._hot: dict[int, np.ndarray] = {}

    def setup(self, ps):
        for name in set(self._hot_keys) | set(self._counts):
            t = ps._table(name)
            if name in self._hot_keys:
                from . import validate
                hot = np.unique(validate.keys(name, t.spec, self._hot_keys[name], "hot_keys"))
            else:
                counts = np.asarray(self._counts[name])
                if counts.shape != (t.spec.num_keys,):
                    raise InputError(f"table {name!r}: access_counts must have shape "
                                     f"({t.spec.num_keys},), got {counts.shape}")
                n_hot = int(round(self.hot_fraction * t.spec.num_keys))
                hot = np.sort(np.argsort(-counts, kind="stable")[:n_hot])
            mask = np.zeros(t.spec.num_keys, bool)
            mask[hot] = True
            self._hot[t.index] = mask
            _replicate_statically(ps, t, hot)

    def _movable(self, t, keys):
        mask = self._hot.get(t.index)
        return keys if mask is None else keys[~mask[keys]]


class ActionTimer:
    """When to act on an intent (AdaPS): early enough that the key is here when the clock
    arrives, not needlessly early.

    Estimates, with exponential smoothing (alpha 0.1), the seconds an action takes
    (intent sent -> key local) and the seconds per clock, and acts once an intent's
    start is within the 0.9999-quantile of Poisson(2 x clocks-per-action) clocks.
    """

    def __init__(self, alpha: float = 0.1, quantile: float = 0.9999):
        self.alpha, self.quantile = alpha, quantile
        self.action_s: float | None = None
        self.clock_s: float | None = None
        self._last_tick: float | None = None
        self._watch: list = []
        self._horizon: int | None = None

    def tick(self) -> None:
        self._horizon = None
        now = time.perf_counter()
        if self._last_tick is not None:
            self.clock_s = self._smooth(self.clock_s, now - self._last_tick)
        self._last_tick = now
        still = []
        for h in self._watch:
            if h.done():
                self.action_s = self._smooth(self.action_s, h.t_done - h.t_start)
            else:
                still.append(h)
        self._watch = still

    def watch(self, handle) -> None:
        self._watch.append(handle)

    def horizon(self) -> int:
        """Clocks ahead at which to act (>= 1); recomputed once per clock tick."""
        if self._horizon is None:
            if not self.action_s or not self.clock_s:
                self._horizon = 1
            else:
                lam = min(2.0 * self.action_s / self.clock_s, 500.0)
                self._horizon = max(1, _poisson_quantile(lam, self.quantile))
        return self._horizon

    def _smooth(self, old, new):
        return new if old is None else (1 - self.alpha) * old + self.alpha * new


def _poisson_quantile(lam: float, q: float) -> int:
    k, p = 0, math.exp(-lam)
    c = p
    while c < q:
        k += 1
        p *= lam / k
        c += p
    return k


class Adaptive(Technique):
    """AdaPS: from intents alone, per key and over time -- relocate a key to the one rank
    that intends to use it, replicate it to every rank when several do, drop a replica
    when its rank's intent expires (its updates go to the owner first), and leave keys
    without intent where they are. When to act is learned (``ActionTimer``).

    Args:
      grace: clocks a replica is kept after its rank's last intent for it ended. A key used
        again within them keeps its replica instead of being dropped and fetched again.
      drop_every: expired replicas are dropped every this many clocks, in one DROP message
        per owner. Measured on kge-zipf-small, 2 ranks (``train.bench``): grace 1 / every
        clock sent 6.6 envelopes per step and rank, grace 4 / every 4 clocks 4.4, with 25%
        less PS CPU per step and the same loss; grace 8 kept more replicas to sync and was
        no faster.
    """

    name = "adaptive"
    relocates = True
    replicates = True

    def __init__(self, grace: int = 4, drop_every: int = 4):
        for name, value in (("grace", grace), ("drop_every", drop_every)):
            if not isinstance(value, int) or value < (1 if name == "drop_every" else 0):
                raise InputError(f"Adaptive: {name} must be an int >= "
                                 f"{1 if name == 'drop_every' else 0}, got {value!r}")
        self._book = _IntentBook()
        self.timer = ActionTimer()
        self.grace, self.drop_every = grace, drop_every

    def setup(self, ps):
        for t in ps._engine.tables:
            t.enable_replicas()
        self._retry = False
        ps._engine.on_ack = lambda: self._on_ack(ps)

    def _on_ack(self, ps):
        if self._retry:  # requests held back for writes in flight: maybe free now
            self._retry = False
            self._act(ps, ps.clock)

    def localize(self, ps, t, keys):
        return ps._engine.localize(t, keys)

    def on_intent(self, ps, t, keys, start, end):
        self._book.add(t, keys, start, end)
        self._act(ps, ps.clock)

    def on_clock(self, ps, clock):
        self.timer.tick()
        eng = ps._engine
        for t in (eng.tables if clock % self.drop_every == 0 else ()):
            keys = t.replicas.keys()
            # Grace: a key used again soon keeps its replica instead of being dropped and
            # fetched again (its DROP in flight would delay the fetch).
            expired = keys[t.intent_end[keys] + self.grace <= clock]
            if len(expired):
                eng.drop(t, expired)
        self._act(ps, clock)

    def _act(self, ps, clock):
        eng = ps._engine
        due = self._book.pop_due(clock, self.timer.horizon())
        for index, keys, end in due:
            # Only intents due now count as this rank's use of a key: for the owner's
            # decisions (replicate rather than hand over) and for keeping replicas. An
            # intent far ahead acts when it is due.
            t = eng.tables[index]
            t.intent_end[keys] = np.maximum(t.intent_end[keys], end)
        for index, keys in _merge_keys(due).items():
            t = eng.tables[index]
            keys = keys[(t.store.slot[keys] == -1) & (t.replicas.slot[keys] == -1)]
            keys = keys[t.intent_end[keys] > clock]
            busy = _keys_with_writes_in_flight(t, keys)
            if busy.any():  # a replica fetched now could miss them: retry after an ack
                self._book.add(t, keys[busy], clock, int(t.intent_end[keys[busy]].max()))
                self._retry = True
                keys = keys[~busy]
            if len(keys):
                self.timer.watch(eng.request(t, keys))


def _keys_with_writes_in_flight(t, keys) -> np.ndarray:
    """Keys with this rank's writes or sync deltas not yet acknowledged by the owner.
    (A replica dropped and asked for again while its last sync is in flight could
    otherwise come back without this rank's own updates.)"""
    pending = [h.keys for h in t.writes_in_flight()]
    if t.sync is not None and not t.sync.done():
        pending.append(t.sync.keys)
    if not pending or not len(keys):
        return np.zeros(len(keys), bool)
    return t.member(keys, np.concatenate(pending))


def _replicate_statically(ps, t, keys) -> None:
    """Replicas of ``keys`` not owned here, from their initial values (no messages:
    initial values are a function of the key)."""
    rep = t.enable_replicas()
    keys = keys[t.store.slot[keys] < 0]
    for start in range(0, len(keys), 1 << 16):
        chunk = keys[start:start + (1 << 16)]
        rep.install(chunk, initial_rows(t.spec, t.name, chunk), 0)  # the owner's first stamp


def make(technique) -> Technique:
    """The policy object for a technique name (or a Technique instance, returned as is)."""
    if isinstance(technique, Technique):
        return technique
    available = {"classic": Classic, "replication": Replication, "relocation": Relocation,
                 "adaptive": Adaptive}
    if technique in available:
        return available[technique]()
    if technique == "nups":
        raise InputError("technique 'nups' needs its hot set: pass technique=jaxps.Nups("
                         "hot_keys={table: keys}) or jaxps.Nups(access_counts={table: counts}, "
                         "hot_fraction=0.01)")
    raise InputError(f"unknown technique {technique!r}; choose one of {TECHNIQUES} "
                     f"or pass a jaxps technique object such as jaxps.Nups(hot_keys=...)")
