"""When replicas sync: rounds paced by the clock, within the staleness bound.

A round (``ReplicatingEngine.start_sync``) sends every written replica's delta to its
owner and brings back the rows that changed. Rounds start every ``staleness_bound // 2``
clocks, at multiples of it -- the clocks at which the adaptive technique acts and OWNER
updates leave, so a round and the clock's requests travel in one envelope per owner. A
round answered within half the bound keeps replicas within the bound without waiting;
``advance_clock`` waits for a round only rather than exceed it.
"""

from __future__ import annotations

from typing import Callable

from .errors import InputError
from .handles import Handle
from .replication import ReplicatingEngine
from .store import TableState


class SyncRounds:
    """Sync round scheduling of one PS (its tables' replicas); lock taken where needed.

    Staleness of a table = this rank's clock minus the clock at which its last completed
    round started (that round reflects every update that had reached the owners).
    """

    def __init__(self, engine: ReplicatingEngine, staleness_bound: int,
                 wait: Callable[[Handle], object]):
        if not isinstance(staleness_bound, int) or staleness_bound < 1:
            raise InputError(f"staleness_bound must be an int >= 1, got {staleness_bound!r}")
        self._engine, self._wait = engine, wait
        self.bound = staleness_bound
        self.every = max(1, staleness_bound // 2)
        self._fresh_as_of = {t.index: 0 for t in engine.tables}
        self._started = {t.index: -(1 << 30) for t in engine.tables}  # clock of the last round

    def tick(self, clock: int) -> None:
        """After ``advance_clock``: collect finished rounds, start due ones."""
        for t in self._engine.tables:
            if t.replicas is not None:
                self.round(t, clock, force=False)

    def round(self, t: TableState, clock: int, *, force: bool) -> None:
        """Collect a finished sync round of ``t`` and start the next one.

        Waits for the round in flight when ``force`` is set, or when replicas would
        otherwise be staler than the bound; a second pass then waits for a fresh round.
        """
        eng, bound = self._engine, self.bound
        for _ in range(2):
            h = t.sync
            stale = clock - self._fresh_as_of[t.index]
            if h is not None and not h.done() and (force or stale > bound):
                self._wait(h)
            with eng.lock:
                if h is not None and h.done():
                    self._fresh_as_of[t.index] = h.started
                    t.sync = None
                stale = clock - self._fresh_as_of[t.index]
                due = (force or stale >= bound or clock - self._started[t.index] >= self.every)
                if t.sync is None and due:
                    self._started[t.index] = clock - clock % self.every
                    t.sync = eng.start_sync(t)
                    if t.sync is None:  # no replicas of this table: nothing is stale
                        self._fresh_as_of[t.index] = clock
                stale = clock - self._fresh_as_of[t.index]
            if force or stale <= bound:
                break
        eng.stats["max_staleness"] = max(eng.stats["max_staleness"], stale)
