"""Handles of non-blocking PS operations (ps-lite's timestamps, as objects)."""

from __future__ import annotations

import threading
import time

import numpy as np


class _Done:
    """The event of a handle that completed when it was made."""

    @staticmethod
    def is_set() -> bool:
        return True

    @staticmethod
    def wait(timeout=None) -> bool:
        return True

    @staticmethod
    def set() -> None:
        pass


_DONE = _Done()


class Handle:
    """A pending PS operation. Wait for it with ``ps.wait(handle)``.

    ``ps.wait`` returns the pulled rows for a pull and None otherwise. A handle may be
    waited on more than once. Thread-safety: completion is signalled by the PS's
    transport thread; ``done()`` may be called from any thread.
    """

    __slots__ = ("id", "kind", "table", "keys", "remaining", "result", "_event", "started",
                 "t_start", "t_done")

    def __init__(self, req_id: int, kind: str, table: str, remaining: int,
                 result: np.ndarray | None = None, keys: np.ndarray | None = None):
        self.id = req_id
        self.kind = kind
        self.table = table
        self.keys = keys            # for writes: the keys in flight (read-your-writes fences)
        self.remaining = remaining  # keys not yet answered
        self.result = result
        self.started = 0          # clock at which the operation started (sync rounds)
        self.t_start = time.perf_counter()
        self.t_done = self.t_start if remaining == 0 else None
        # Most handles complete at once (local keys): no Event (a lock and a condition) for them.
        self._event = threading.Event() if remaining > 0 else _DONE

    def done(self) -> bool:
        """True once every key of the operation has been answered."""
        return self._event is _DONE or self._event.is_set()

    def _answer(self, n: int) -> bool:
        """Count n answered keys; returns True when the operation completed."""
        self.remaining -= n
        if self.remaining <= 0:
            self.t_done = time.perf_counter()
            self._event.set()
            return True
        return False

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.remaining} keys pending"
        return f"Handle({self.kind} {self.table!r}, {state})"


def completed(kind: str, table: str, result: np.ndarray | None = None) -> Handle:
    """A handle for an operation that finished locally."""
    return Handle(-1, kind, table, 0, result)
