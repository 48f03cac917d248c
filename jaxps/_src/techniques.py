"""Management techniques as policy objects behind one interface.

A technique decides what the PS does with intents and clock ticks and whether keys
may change owner. The protocol engine is the same for all of them: "classic" is just
the policy that never relocates.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .server import ParameterServer
    from .store import TableState

TECHNIQUES = ("classic", "replication", "relocation", "nups", "adaptive")


class Technique:
    """Interface. ``relocates``: keys can change owner, so writes need read-your-writes fences."""

    name = "?"
    relocates = False

    def localize(self, ps: "ParameterServer", t: "TableState", keys: np.ndarray):
        """Handle a user ``localize``; returns a handle or None (ignored)."""
        return None

    def on_intent(self, ps: "ParameterServer", t: "TableState", keys: np.ndarray,
                  start: int, end: int) -> None:
        """A worker declared it will access ``keys`` during its clocks [start, end)."""

    def on_clock(self, ps: "ParameterServer", clock: int) -> None:
        """This rank's clock advanced to ``clock``."""


class Classic(Technique):
    """Static partitioning: key k lives on rank k % size forever; intents and localize are ignored."""

    name = "classic"


@dataclasses.dataclass
class _Intent:
    table: "TableState"
    keys: np.ndarray
    start: int
    end: int


class Relocation(Technique):
    """Lapse: dynamic allocation. ``localize`` moves keys here; an intent localizes its keys
    once its start is within ``horizon`` clocks (default 1: act for the next batch now).
    """

    name = "relocation"
    relocates = True

    def __init__(self, horizon: int = 1):
        self.horizon = horizon
        self._waiting: list[_Intent] = []

    def localize(self, ps, t, keys):
        return ps._engine.localize(t, keys)

    def on_intent(self, ps, t, keys, start, end):
        self._waiting.append(_Intent(t, keys, start, end))
        self.on_clock(ps, ps.clock)

    def on_clock(self, ps, clock):
        due = [i for i in self._waiting if i.start <= clock + self.horizon]
        if not due:
            return
        self._waiting = [i for i in self._waiting if i.start > clock + self.horizon]
        by_table: dict[int, list[np.ndarray]] = {}
        for i in due:
            if i.end > clock:  # an intent that already expired needs no action
                by_table.setdefault(i.table.index, []).append(i.keys)
        for index, parts in by_table.items():
            t = ps._engine.tables[index]
            ps._engine.localize(t, np.unique(np.concatenate(parts)))


def make(technique: str) -> Technique:
    """The policy object for a technique name, or InputError listing the valid names."""
    available = {"classic": Classic, "relocation": Relocation}
    if technique in available:
        return available[technique]()
    if technique in TECHNIQUES:
        raise InputError(f"technique {technique!r} is not available yet; "
                         f"available: {sorted(available)}")
    raise InputError(f"unknown technique {technique!r}; choose one of {TECHNIQUES}")
