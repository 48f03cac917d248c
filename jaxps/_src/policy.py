"""The policy layer: the ``Technique`` protocol and ``PolicyView``, all a technique sees.

A technique decides *where keys live*; the protocol engine below it does the moving and
copying, and keeps every update (no lost update, read-your-writes) whatever the
technique asks for. The split follows optax: a technique object holds only its settings;
``setup(view)`` returns its per-server state (like ``init``), which the PS hands back to
every hook. Hooks run with the PS lock held, on whichever thread made the call (the
user's for ``on_intent``/``on_clock``/``localize``, the one that handles a message for
``decide_at_owner``/``on_ack``), so they must be quick and must not block.

Tables are named by their ``TableSpec`` name; keys are sorted unique int64 arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import validate
from .errors import InputError
from .handles import Handle
from .store import ABSENT
from .tables import TableSpec, initial_rows

if TYPE_CHECKING:
    from .replication import ReplicatingEngine


class Technique:
    """Interface of a parameter management technique (subclass it; every hook optional).

    Class attributes:
      name: shown in stats, logs and benchmark tables.
      relocates: keys can change owner (reads then fence on own in-flight writes).
      replicates: replicas exist (the PS runs sync rounds; ``wait_sync`` syncs them).
      steps_in_collectives: ``SparseTrainer`` moves each step's rows in collectives of its
        own instead of PS messages (lockstep.py; keys must then never move).
    """

    name = "?"
    relocates = False
    replicates = False
    steps_in_collectives = False

    def setup(self, view: "PolicyView") -> Any:
        """Called once, collectively, after the tables exist; returns the technique's
        per-server state (any object; passed to every hook). Static replicas are made here."""
        return None

    def localize(self, view: "PolicyView", state, table: str, keys: np.ndarray):
        """A user's ``ps.localize``; returns a Handle, or None to ignore it."""
        return None

    def on_intent(self, view: "PolicyView", state, table: str, keys: np.ndarray,
                  start: int, end: int) -> None:
        """This rank will access ``keys`` during its clocks [start, end)."""

    def on_clock(self, view: "PolicyView", state, clock: int) -> None:
        """This rank's clock advanced to ``clock``."""

    def on_ack(self, view: "PolicyView", state) -> None:
        """A write or sync round of this rank was acknowledged by an owner (keys that
        ``view.writes_in_flight`` reported busy may be free now)."""

    def decide_at_owner(self, view: "PolicyView", state, table: str, keys: np.ndarray,
                        origin: int) -> np.ndarray:
        """At the owner of ``keys``: rank ``origin`` asked for them (``view.request``).
        Returns a bool mask: True -> send ``origin`` a replica, False -> hand the key over
        to ``origin`` (it becomes the owner). Default: hand over."""
        return np.zeros(len(keys), bool)


class PolicyView:
    """What a technique may read and do: a narrow face of one rank's PS.

    Reads are of this rank's state only (where a key is, as far as this rank knows);
    actions are asynchronous and return Handles; the PS keeps them correct under
    concurrency, so a technique cannot lose an update whatever it asks for.
    """

    def __init__(self, engine: "ReplicatingEngine"):
        self._engine = engine
        self._by_name = {t.name: t for t in engine.tables}
        self._specs = {t.name: t.spec for t in engine.tables}

    # ----- reading ----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._engine.rank

    @property
    def size(self) -> int:
        return self._engine.size

    @property
    def clock(self) -> int:
        """This rank's clock."""
        return self._engine.clock

    @property
    def tables(self) -> dict[str, TableSpec]:
        """Table name -> TableSpec (read-only copy)."""
        return dict(self._specs)

    def owned(self, table: str, keys: np.ndarray) -> np.ndarray:
        """Mask: this rank owns the key now."""
        return self._by_name[table].store.slot[keys] >= 0

    def absent(self, table: str, keys: np.ndarray) -> np.ndarray:
        """Mask: this rank neither owns the key, nor waits for it, nor holds or awaits a
        replica of it (what ``localize`` / ``request`` may be asked for)."""
        t = self._by_name[table]
        out = t.store.slot[keys] == ABSENT
        if t.replicas is not None:
            out &= t.replicas.slot[keys] == ABSENT
        return out

    def replica_keys(self, table: str) -> np.ndarray:
        """Keys with a ready replica here (sorted)."""
        t = self._by_name[table]
        return t.replicas.keys() if t.replicas is not None else np.zeros(0, np.int64)

    def holders(self, table: str, keys: np.ndarray) -> np.ndarray:
        """For keys this rank owns: how many other ranks hold a replica."""
        return self._by_name[table].holders[keys]

    def writes_in_flight(self, table: str, keys: np.ndarray) -> np.ndarray:
        """Mask: this rank's writes, drops or sync deltas of the key are not yet
        acknowledged. ``request`` waits for them (via ``on_ack``): a replica fetched now
        could miss this rank's own updates."""
        t = self._by_name[table]
        pending = [h.keys for h in t.writes_in_flight()]
        if t.sync is not None and not t.sync.done():
            pending.append(t.sync.keys)
        if not pending or not len(keys):
            return np.zeros(len(keys), bool)
        return t.member(keys, np.concatenate(pending))

    def check_keys(self, table: str, keys, what: str = "keys") -> np.ndarray:
        """``keys`` validated for ``table`` (InputError naming ``what``), sorted unique."""
        if table not in self._specs:
            raise InputError(f"unknown table {table!r}; tables are "
                                      f"{sorted(self._specs)}")
        return validate.unique(validate.keys(table, self._specs[table], keys, what))

    # ----- acting -----------------------------------------------------------------------
    def localize(self, table: str, keys: np.ndarray) -> Handle:
        """Move ``keys`` here (Lapse: via the home to the owner). Keys that are here, on
        their way or replicated are left as they are."""
        return self._engine.localize(self._by_name[table], keys)

    def request(self, table: str, keys: np.ndarray) -> Handle:
        """Ask the owners of ``keys`` for them; each owner's ``decide_at_owner`` chooses
        a replica or a hand-over. Precondition: ``absent`` and not ``writes_in_flight``."""
        t = self._by_name[table]
        if t.replicas is None:
            raise InputError(f"table {table!r}: request needs replicas; call "
                                      f"view.enable_replicas({table!r}) in setup")
        return self._engine.request(t, keys)

    def drop_replicas(self, table: str, keys: np.ndarray) -> Handle:
        """Drop ready replicas of ``keys``; their unsynced updates go to the owners."""
        return self._engine.drop(self._by_name[table], keys)

    def enable_replicas(self, table: str) -> None:
        """Let ``table`` hold replicas (call in ``setup``; the PS then syncs them)."""
        self._by_name[table].enable_replicas()

    def replicate(self, table: str, keys: np.ndarray) -> None:
        """In ``setup`` only: replicas of ``keys`` not owned here, from their initial
        values (no messages: initial values are a function of the key)."""
        t = self._by_name[table]
        rep = t.enable_replicas()
        keys = keys[t.store.slot[keys] < 0]
        for start in range(0, len(keys), 1 << 16):
            chunk = keys[start:start + (1 << 16)]
            rep.install(chunk, initial_rows(t.spec, t.name, chunk), 0)  # the owner's first stamp
