"""ParameterServer: the public face of the PS (pull/push/set/localize/intent/clock)."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from . import techniques, validate
from .engine import Engine, Msg
from .errors import InputError
from .handles import Handle, completed
from .protocol import Tag
from .store import TableState
from .tables import TableSpec
from .transport import Transport

STAT_KEYS = ("pull_local", "pull_remote", "push_local", "push_remote", "bytes_sent",
             "bytes_received", "messages_sent", "messages_received", "relocations",
             "relocations_out", "forwards", "replicas", "wait_seconds")


class ParameterServer:
    """A location-transparent parameter server over MPI, one instance per rank.

    Every rank of ``comm`` constructs it with the same arguments (collective). Any rank
    can pull/push/set any key at any time, wherever the key lives; a rank reads its
    own writes; no update is lost, also while a key is being relocated.

    Args:
      tables: table name -> TableSpec.
      technique: "classic" (static partitioning: key k on rank k % size) or
        "relocation" (Lapse: ``localize`` and intents move keys to the rank that uses them).
      comm: MPI communicator (default COMM_WORLD). The PS works on a clone, so its
        messages never collide with the caller's. A world of size 1 needs no mpiexec
        and runs no background thread.
      check_finite: reject pushes/sets containing NaN or Inf (InputError).
      abort_on_error: with more than one rank, an exception that escapes the ``with``
        block, or any uncaught exception in the process, prints its traceback and
        aborts the whole MPI job, so no rank waits forever for a dead peer.

    Thread-safety: all methods may be called from any thread; operations are applied
    in the order they take the PS's internal lock. Use as a context manager, or call
    ``close()`` (collective) at the end.
    """

    def __init__(self, tables: Mapping[str, TableSpec], *, technique: str = "relocation",
                 comm: MPI.Comm | None = None, check_finite: bool = True,
                 abort_on_error: bool = True):
        if not isinstance(tables, Mapping) or not tables:
            raise InputError("tables must be a non-empty dict of name -> jaxps.TableSpec")
        for name, spec in tables.items():
            if not isinstance(name, str) or not isinstance(spec, TableSpec):
                raise InputError(f"tables[{name!r}] must map a str name to a jaxps.TableSpec, "
                                 f"got {type(spec).__name__}")
        self._technique = techniques.make(technique)
        self._comm = (MPI.COMM_WORLD if comm is None else comm).Clone()
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self._check_finite = check_finite
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._stats["wait_seconds"] = 0.0
        self._specs = dict(tables)
        states = [TableState(name, i, tables[name], self.rank, self.size)
                  for i, name in enumerate(sorted(tables))]
        self._by_name = {t.name: t for t in states}
        self._engine = Engine(states, self.rank, self.size, self._stats)
        self._clock = 0
        self._closed = False
        if self.size > 1:
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                raise RuntimeError("jaxps needs MPI_THREAD_MULTIPLE; do not set "
                                   "mpi4py.rc.thread_level to a lower level")
            if abort_on_error:
                _install_abort_hooks()
            self._abort_on_error = abort_on_error
            self._engine.transport = Transport(self._comm, self._engine.on_message, self._stats)
            self._engine.transport.start()
        else:
            self._abort_on_error = False

    # ----- context manager -------------------------------------------------------------
    def __enter__(self) -> "ParameterServer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._abort_on_error and not self._closed:
            # The other ranks would wait forever in close(): end the job with this error.
            sys.stderr.write(f"[jaxps rank {MPI.COMM_WORLD.Get_rank()}] aborting the job:\n")
            traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
        self.close()

    def close(self) -> None:
        """Collective: finish outstanding operations, stop the service thread, free comm."""
        if self._closed:
            return
        self.barrier()
        self._closed = True
        if self._engine.transport is not None:
            self._engine.transport.close()
        self._comm.Free()

    # ----- reads and writes -------------------------------------------------------------
    def pull(self, table: str, keys) -> np.ndarray:
        """Rows of ``keys`` as a new float32 array [len(keys), width]. Keys: any int array."""
        return self.wait(self.pull_async(table, keys))

    def pull_async(self, table: str, keys) -> Handle:
        """Non-blocking pull; ``wait(handle)`` returns the rows."""
        t = self._table(table)
        keys = validate.keys(t.name, t.spec, keys)
        self._fence(t, keys)
        eng = self._engine
        with eng.lock:
            slots = t.store.slot[keys]
            local = slots >= 0
            n_local = int(np.count_nonzero(local))
            self._stats["pull_local"] += n_local
            self._stats["pull_remote"] += len(keys) - n_local
            if n_local == len(keys):
                return completed("pull", t.name, t.store.values[slots])
            out = np.empty((len(keys), t.spec.width), np.float32)
            out[local] = t.store.values[slots[local]]
            h = eng.new_handle("pull", t, len(keys) - n_local, result=out)
            remote = np.flatnonzero(~local)
            eng.serve(Msg(Tag.PULL, t, h.id, self.rank, keys[remote], remote))
        return h

    def push(self, table: str, keys, deltas) -> None:
        """Add ``deltas`` [len(keys), width] to the rows; duplicate keys are summed."""
        self.wait(self.push_async(table, keys, deltas))

    def push_async(self, table: str, keys, deltas) -> Handle:
        """Non-blocking push. Later pulls of these keys by this rank see the update."""
        t = self._table(table)
        keys = validate.keys(t.name, t.spec, keys)
        deltas = validate.rows(t.name, t.spec, deltas, keys, "deltas",
                               check_finite=self._check_finite)
        keys, deltas = _sum_duplicates(keys, deltas)
        return self._write(Tag.PUSH, t, keys, deltas)

    def set(self, table: str, keys, values) -> None:
        """Overwrite the rows of ``keys`` (unique) with ``values`` [len(keys), width]."""
        self.wait(self.set_async(table, keys, values))

    def set_async(self, table: str, keys, values) -> Handle:
        """Non-blocking set."""
        t = self._table(table)
        keys = validate.keys(t.name, t.spec, keys)
        values = validate.rows(t.name, t.spec, values, keys, "values",
                               check_finite=self._check_finite)
        validate.unique_keys(t.name, keys, "keys")
        return self._write(Tag.SET, t, keys, values)

    def _write(self, tag: Tag, t: TableState, keys: np.ndarray, rows: np.ndarray) -> Handle:
        eng = self._engine
        kind = "push" if tag is Tag.PUSH else "set"
        with eng.lock:
            slots = t.store.slot[keys]
            local = slots >= 0
            if tag is Tag.PUSH:
                t.store.add(slots[local], rows[local])
            else:
                t.store.values[slots[local]] = rows[local]
            n_local = int(np.count_nonzero(local))
            self._stats["push_local"] += n_local
            self._stats["push_remote"] += len(keys) - n_local
            if n_local == len(keys):
                return completed(kind, t.name)
            remote = ~local
            h = eng.new_handle(kind, t, len(keys) - n_local, keys=keys[remote])
            if self._technique.relocates:
                t.pending_writes.append(h)
            eng.serve(Msg(tag, t, h.id, self.rank, keys[remote],
                          np.flatnonzero(remote), rows[remote]))
        return h

    def _fence(self, t: TableState, keys: np.ndarray) -> None:
        """Read-your-writes when keys move: wait for own in-flight writes to these keys.

        A write and a later read can take different routes once a key has moved (the
        read may go straight to the new owner while the write is still being
        forwarded), so a read waits for the acknowledgement of overlapping writes.
        """
        if not t.pending_writes:
            return
        with self._engine.lock:
            t.pending_writes = [h for h in t.pending_writes if not h.done()]
            overlapping = [h for h in t.pending_writes if np.isin(h.keys, keys).any()]
        for h in overlapping:
            self.wait(h)

    # ----- placement, intents, clock ----------------------------------------------------
    def localize(self, table: str, keys) -> None:
        """Move ``keys`` to this rank (Lapse) and wait until they arrived.

        A hint: another rank may take a key away again at any time. Ignored by "classic".
        """
        h = self.localize_async(table, keys)
        if h is not None:
            self.wait(h)

    def localize_async(self, table: str, keys) -> Handle | None:
        """Non-blocking ``localize``; returns a handle (None if the technique ignores it)."""
        t = self._table(table)
        keys = np.unique(validate.keys(t.name, t.spec, keys))
        with self._engine.lock:
            return self._technique.localize(self, t, keys)

    def intent(self, table: str, keys, start: int, end: int | None = None) -> None:
        """Declare that this rank will access ``keys`` during its clocks [start, end).

        ``end`` defaults to ``start + 1``. Cheap in bulk; the technique decides whether
        and when to act (classic ignores intents).
        """
        t = self._table(table)
        keys = np.unique(validate.keys(t.name, t.spec, keys))
        start, end = validate.clock_range(start, end)
        with self._engine.lock:
            self._technique.on_intent(self, t, keys, start, end)

    def advance_clock(self) -> int:
        """Tick this rank's clock (trainers tick once per batch); returns the new clock."""
        with self._engine.lock:
            self._clock += 1
            self._technique.on_clock(self, self._clock)
        return self._clock

    @property
    def clock(self) -> int:
        """This rank's logical clock (starts at 0)."""
        return self._clock

    @property
    def technique(self) -> str:
        return self._technique.name

    # ----- waiting and synchronization --------------------------------------------------
    def wait(self, handle: Handle | None):
        """Block until ``handle`` completed; returns pulled rows for a pull, else None."""
        if handle is None:
            return None
        if not handle.done():
            t0 = time.perf_counter()
            handle._event.wait()
            self._stats["wait_seconds"] += time.perf_counter() - t0
        return handle.result

    def wait_all(self) -> None:
        """Wait for every operation this rank has started (including technique actions)."""
        while True:
            with self._engine.lock:
                pending = list(self._engine.handles.values())
            if not pending:
                return
            for h in pending:
                self.wait(h)

    def wait_sync(self) -> None:
        """Collective: afterwards every write issued anywhere before the call is visible
        on every rank. (Without replicas this is ``barrier``.)"""
        self.barrier()

    def barrier(self) -> None:
        """Collective: wait for own operations, then for every rank to arrive."""
        self.wait_all()
        if self.size > 1:
            done = self._engine.transport.barrier()
            t0 = time.perf_counter()
            done.wait()
            self._stats["wait_seconds"] += time.perf_counter() - t0

    # ----- introspection ---------------------------------------------------------------
    def stats(self) -> dict:
        """Cumulative counters of this rank (keys pulled/pushed locally/remotely, bytes,
        messages, relocations into this rank, replicas held, seconds blocked in PS calls)
        plus ``owned`` keys per table."""
        with self._engine.lock:
            out = dict(self._stats)
            out["owned"] = {t.name: t.store.num_owned for t in self._engine.tables}
        pulls = out["pull_local"] + out["pull_remote"]
        out["local_fraction"] = out["pull_local"] / pulls if pulls else 1.0
        return out

    def reset_stats(self) -> None:
        """Zero this rank's counters."""
        with self._engine.lock:
            for k in self._stats:
                self._stats[k] = 0.0 if k == "wait_seconds" else 0

    def owned_keys(self, table: str) -> np.ndarray:
        """Keys of ``table`` currently stored on this rank (sorted int64). O(num_keys)."""
        t = self._table(table)
        with self._engine.lock:
            return t.store.owned_keys()

    def _table(self, name: str) -> TableState:
        t = self._by_name.get(name)
        if t is None:
            raise InputError(f"unknown table {name!r}; tables are {sorted(self._by_name)}")
        if self._closed:
            raise InputError("the ParameterServer is closed")
        return t


def _sum_duplicates(keys: np.ndarray, rows: np.ndarray):
    """(unique keys, summed rows). Sorting int keys is cheap; the sum runs only if needed."""
    if len(keys) < 2:
        return keys, rows
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.empty(len(sk), bool)
    first[0] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    if first.all():
        return keys, rows
    starts = np.flatnonzero(first)
    return sk[starts], np.add.reduceat(rows[order], starts, axis=0)


_hooks_installed = False


def _install_abort_hooks() -> None:
    """Uncaught exceptions (any thread) print and abort the whole MPI job."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    prev_hook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        prev_hook(exc_type, exc, tb)
        sys.stderr.write(f"[jaxps rank {MPI.COMM_WORLD.Get_rank()}] uncaught exception: "
                         f"aborting the MPI job\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)

    def thread_hook(args):
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
