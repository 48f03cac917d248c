"""ParameterServer: the public face of the PS (pull/push/set/localize/intent/clock)."""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from . import techniques, validate
from .engine import Engine
from .message import Msg
from .errors import InputError
from .handles import Handle, completed
from .protocol import Tag
from .store import TableState
from .tables import TableSpec
from .transport import SPIN_S, Transport, abort_now

WAIT_KINDS = ("pull", "push", "set", "localize", "intent", "drop", "sync", "barrier")
STAT_KEYS = ("pull_local", "pull_remote", "push_local", "push_remote", "bytes_sent",
             "bytes_received", "messages_sent", "messages_received", "relocations",
             "relocations_out", "forwards", "replicas_created", "replicas_dropped",
             "sync_rounds", "max_staleness", "wait_seconds",
             *(f"wait_{kind}_seconds" for kind in WAIT_KINDS))


class ParameterServer:
    """A location-transparent parameter server over MPI, one instance per rank.

    Every rank of ``comm`` constructs it with the same arguments (collective). Any rank
    can pull/push/set any key at any time, wherever the key lives; a rank reads its
    own writes; no update is lost, also while a key is being relocated.

    Args:
      tables: table name -> TableSpec.
      technique: "classic", "replication", "relocation", "nups" or "adaptive" (see
        ``jaxps.TECHNIQUES`` and docs/design.md), or a technique object such as
        ``jaxps.Nups(hot_keys={"relation": keys})``. "adaptive" needs no tuning.
      comm: MPI communicator (default COMM_WORLD). The PS works on a clone, so its
        messages never collide with the caller's. A world of size 1 needs no mpiexec
        and runs no background thread.
      check_finite: reject pushes/sets containing NaN or Inf (InputError).
      staleness_bound: replicas reflect every update that reached the owner at most this
        many of this rank's clocks ago (plus all of this rank's own writes);
        ``advance_clock`` waits for a sync round rather than exceed it.
      peer_timeout: seconds after which a rank that has sent nothing (the PS sends
        heartbeats when idle) is declared stopped, hung or gone, and the job ends naming it
        (None: wait forever).
      abort_on_error: with more than one rank, an exception that escapes the ``with``
        block prints its traceback and aborts the whole MPI job, so no rank waits
        forever for a dead peer. Errors elsewhere in the program (before the PS exists,
        after it closed, on other threads) are the entrypoint's: wrap it in
        ``jaxps.run_main`` (or call ``jaxps.install_abort_hooks()`` first).

    Thread-safety: all methods may be called from any thread; operations are applied
    in the order they take the PS's internal lock. Use as a context manager, or call
    ``close()`` (collective) at the end.

    MPI in the caller's code: the PS serves other ranks from a background thread, which
    needs the GIL. mpi4py's pickle-based reductions (``comm.allreduce``/``reduce``/
    ``scan`` of Python objects) hold the GIL while they wait for other ranks, so a rank
    inside one cannot serve its peers, and a peer that needs it first deadlocks. While a
    PS is open use the buffer versions (``comm.Allreduce``), ``allgather``, or call
    ``ps.barrier()`` first.
    """

    def __init__(self, tables: Mapping[str, TableSpec], *, technique="relocation",
                 comm: MPI.Comm | None = None, check_finite: bool = True,
                 staleness_bound: int = 2, abort_on_error: bool = True,
                 peer_timeout: float | None = 60.0):
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
        # The same keys on every rank, so that ranks can reduce them key by key.
        self._stats = {k: 0.0 if k.startswith("wait_") else 0 for k in STAT_KEYS}
        self._specs = dict(tables)
        states = [TableState(name, i, tables[name], self.rank, self.size)
                  for i, name in enumerate(sorted(tables))]
        self._by_name = {t.name: t for t in states}
        self._engine = Engine(states, self.rank, self.size, self._stats)
        self._clock = 0
        self._closed = False
        if not isinstance(staleness_bound, int) or staleness_bound < 1:
            raise InputError(f"staleness_bound must be an int >= 1, got {staleness_bound!r}")
        self._staleness_bound = staleness_bound
        if peer_timeout is not None and not (isinstance(peer_timeout, (int, float))
                                             and math.isfinite(peer_timeout) and peer_timeout > 0):
            raise InputError(f"peer_timeout must be a number of seconds > 0 or None, got "
                             f"{peer_timeout!r}")
        self._fresh_as_of = {t.index: 0 for t in states}
        self._sync_started = {t.index: -(1 << 30) for t in states}  # clock of the last round
        self._technique.setup(self)
        if self.size > 1:
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                raise RuntimeError("jaxps needs MPI_THREAD_MULTIPLE; do not set "
                                   "mpi4py.rc.thread_level to a lower level")
            self._abort_on_error = abort_on_error
            latency, bandwidth = _emulated_network()
            spin = SPIN_S if not _cores_shared(self._comm) else 0.0
            self._engine.transport = Transport(self._comm, self._engine.on_envelope, self._stats,
                                               poll=self._engine.poll, net_latency_s=latency,
                                               net_bandwidth=bandwidth,
                                               peer_timeout=peer_timeout, spin_s=spin)
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
            abort_now()
        self.close()

    def close(self) -> None:
        """Collective: finish outstanding operations, stop the service thread, free comm."""
        if self._closed:
            return
        self.barrier()
        self._closed = True
        if self._engine.transport is not None:
            with self._engine.lock:  # the last OWNER updates; nothing sends after them
                self._engine.flush_owner_updates()
                self._engine.flush()
            self._engine.transport.quiesce().wait()
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
        return self._start_pull(t, keys, np.empty((len(keys), t.spec.width), np.float32))

    # The trainer's fast path (jaxps._src.trainer): its keys are validated once per batch
    # in the batch thread, its deltas checked for NaN inside the jitted step.
    def _checked_keys(self, table: str, keys) -> np.ndarray:
        """``keys`` of ``table`` validated as for ``pull`` (int64 [n])."""
        t = self._table(table)
        return validate.keys(t.name, t.spec, keys)

    def _pull_into(self, table: str, keys: np.ndarray, out: np.ndarray) -> Handle:
        """Pull validated ``keys`` into ``out[:len(keys)]`` (float32 [>= n, width])."""
        t = self._table(table)
        return self._start_pull(t, keys, out[:len(keys)])

    def _push_checked(self, table: str, keys: np.ndarray, deltas: np.ndarray) -> Handle:
        """Push with validated, unique ``keys`` and finite float32 ``deltas`` [n, width]."""
        return self._write(Tag.PUSH, self._table(table), keys, deltas)

    def _start_pull(self, t: TableState, keys: np.ndarray, out: np.ndarray) -> Handle:
        self._fence(t, keys)
        eng = self._engine
        with eng.lock:
            slots = t.store.slot[keys]
            local = slots >= 0
            if local.all():
                self._stats["pull_local"] += len(keys)
                np.take(t.store.values, slots, axis=0, out=out, mode="clip")
                return completed("pull", t.name, out)
            # Integer positions, not boolean masks: each mask indexing of rows is a copy.
            own, other = np.flatnonzero(local), np.flatnonzero(~local)
            out[own] = t.store.values[slots[own]]
            if t.replicas is not None:  # owned or ready replicas only: answer here
                rslots = t.replicas.slot[keys[other]]
                if (rslots >= 0).all():
                    out[other] = t.replicas.value(rslots)
                    self._stats["pull_local"] += len(keys)
                    return completed("pull", t.name, out)
            self._count_local("pull", t, keys, local)
            h = eng.new_handle("pull", t, int(np.count_nonzero(~local)), result=out)
            rest = np.flatnonzero(~local)  # replicas answer inline, the rest travels
            eng.serve(Msg(Tag.PULL, t, h.id, self.rank, keys[rest], rest))
            self._flush()
        return h

    def _count_local(self, op: str, t: TableState, keys: np.ndarray, local: np.ndarray) -> None:
        """Stats: keys served locally = owned or replicated here at call time."""
        if t.replicas is not None:
            local = local | (t.replicas.slot[keys] >= 0)
        n_local = int(np.count_nonzero(local))
        self._stats[f"{op}_local"] += n_local
        self._stats[f"{op}_remote"] += len(keys) - n_local

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
            if local.all():  # the common case: no boolean-mask copies of the rows
                if tag is Tag.PUSH:
                    t.store.add(slots, rows)
                else:
                    t.store.assign(slots, rows)
                self._stats["push_local"] += len(keys)
                return completed(kind, t.name)
            own, other = np.flatnonzero(local), np.flatnonzero(~local)
            if t.replicas is not None:  # owned or ready replicas only: apply here
                rslots = t.replicas.slot[keys[other]]
                if (rslots >= 0).all():
                    if tag is Tag.PUSH:
                        t.store.add(slots[own], rows[own])
                        t.replicas.add(rslots, rows[other])
                    else:
                        t.store.assign(slots[own], rows[own])
                        t.replicas.assign(rslots, rows[other])
                    self._stats["push_local"] += len(keys)
                    return completed(kind, t.name)
            if tag is Tag.PUSH:
                t.store.add(slots[local], rows[local])
            else:
                t.store.assign(slots[local], rows[local])
            self._count_local("push", t, keys, local)
            rest = ~local  # replicas apply inline, the rest travels
            h = eng.new_handle(kind, t, int(np.count_nonzero(rest)), keys=keys[rest])
            eng.serve(Msg(tag, t, h.id, self.rank, keys[rest], np.flatnonzero(rest), rows[rest]))
            self._flush()
            if self._technique.relocates and not h.done():
                t.pending_writes.append(h)
        return h

    def _fence(self, t: TableState, keys: np.ndarray) -> None:
        """Read-your-writes when keys move: wait for own in-flight writes to these keys.

        A write and a later read can take different routes once a key has moved (the
        read may go straight to the new owner while the write is still being
        forwarded), so a read waits for the acknowledgement of overlapping writes.
        The same holds for the deltas of a sync round in flight once the key is no longer
        replicated here (it became owned, or its replica was dropped).
        """
        sync = t.sync
        if not t.pending_writes and (sync is None or sync.done()):
            return
        with self._engine.lock:
            overlapping = [h for h in t.writes_in_flight() if t.member(h.keys, keys).any()]
            if sync is not None and not sync.done():
                unreplicated = keys[t.replicas.slot[keys] < 0]
                if t.member(sync.keys, unreplicated).any():
                    overlapping.append(sync)
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
        keys = _unique(validate.keys(t.name, t.spec, keys))
        with self._engine.lock:
            h = self._technique.localize(self, t, keys)
            self._flush()
            return h

    def intent(self, table: str, keys, start: int, end: int | None = None) -> None:
        """Declare that this rank will access ``keys`` during its clocks [start, end).

        ``end`` defaults to ``start + 1``. Cheap in bulk; the technique decides whether
        and when to act (classic ignores intents).
        """
        self._intent_unsent(table, keys, start, end)
        self._send_queued()

    def _intent_unsent(self, table: str, keys, start: int, end: int | None = None) -> None:
        """``intent`` whose messages wait for ``_send_queued`` (the trainer signals every
        table's intents, then sends them in one envelope per owner)."""
        t = self._table(table)
        keys = validate.keys(t.name, t.spec, keys)
        start, end = validate.clock_range(start, end)
        if self.size == 1:
            return  # every key is here already: nothing to act on
        keys = _unique(keys)
        with self._engine.lock:
            self._technique.on_intent(self, t, keys, start, end)

    def _send_queued(self) -> None:
        """Send the messages PS calls queued (one envelope per destination)."""
        if self._engine.transport is not None and self._engine.has_unsent:
            with self._engine.lock:
                self._engine.flush()

    def advance_clock(self) -> int:
        """Tick this rank's clock (trainers tick once per batch); returns the new clock.

        With replicas, also starts a sync round per table when the previous one finished,
        and waits for an unfinished one that would exceed ``staleness_bound``.
        """
        eng = self._engine
        with eng.lock:
            self._clock += 1
            eng.clock = self._clock
            self._technique.on_clock(self, self._clock)
            eng.flush_owner_updates()
        if self._technique.replicates:
            for t in eng.tables:
                if t.replicas is not None:
                    self._sync_round(t, force=False)
        with eng.lock:
            self._flush()
        return self._clock

    def _flush(self) -> None:
        """Send the messages this call queued, one envelope per destination (lock held)."""
        if self._engine.transport is not None:
            self._engine.flush()

    def _sync_round(self, t: TableState, *, force: bool) -> None:
        """Collect a finished sync round of ``t`` and start the next one.

        Waits for the round in flight when ``force`` is set, or when replicas would
        otherwise be staler than ``staleness_bound`` clocks (staleness = clocks since the
        start of the last completed round); a second pass then waits for a fresh round.

        A new round starts only once the last one started ``staleness_bound`` clocks ago
        (or staleness reached the bound): a round that completes within a clock keeps
        replicas within the bound, and each round is a SYNC and a SYNC_REPLY per owner
        and table (every clock, they were half of the adaptive technique's messages).
        """
        for _ in range(2):
            h = t.sync
            stale = self._clock - self._fresh_as_of[t.index]
            if h is not None and not h.done() and (force or stale > self._staleness_bound):
                self.wait(h)
            with self._engine.lock:
                if h is not None and h.done():
                    self._fresh_as_of[t.index] = h.started
                    t.sync = None
                stale = self._clock - self._fresh_as_of[t.index]
                due = (force or stale >= self._staleness_bound
                       or self._clock - self._sync_started[t.index] >= self._staleness_bound)
                if t.sync is None and due:
                    self._sync_started[t.index] = self._clock
                    t.sync = self._engine.start_sync(t)
                    if t.sync is None:  # no replicas of this table: nothing is stale
                        self._fresh_as_of[t.index] = self._clock
                stale = self._clock - self._fresh_as_of[t.index]
            if force or stale <= self._staleness_bound:
                break
        self._stats["max_staleness"] = max(self._stats["max_staleness"], stale)

    @property
    def clock(self) -> int:
        """This rank's logical clock (starts at 0)."""
        return self._clock

    @property
    def technique(self) -> str:
        """Name of the management technique."""
        return self._technique.name

    @property
    def tables(self) -> dict[str, TableSpec]:
        """Table name -> TableSpec, as given to the constructor."""
        return dict(self._specs)

    # ----- waiting and synchronization --------------------------------------------------
    def wait(self, handle: Handle | None):
        """Block until ``handle`` completed; returns pulled rows for a pull, else None.

        While it waits, this thread receives and handles the PS's messages itself (the
        reply it waits for among them), instead of waking the transport thread for them.
        """
        if handle is None:
            return None
        if not handle.done():
            t0 = time.perf_counter()
            transport = self._engine.transport
            if transport is None:
                handle._event.wait()
            else:
                if self._engine.has_unsent:
                    with self._engine.lock:
                        self._engine.flush()
                transport.drive(handle.done, handle._event)
            dt = time.perf_counter() - t0
            self._stats["wait_seconds"] += dt
            self._stats[f"wait_{handle.kind}_seconds"] += dt
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
        on every rank, replicas included.

        Two sync rounds: the first brings every replica's deltas to the owners, the
        second (after a barrier) brings the merged values back to every replica.
        Without replicas this is ``barrier``.
        """
        self.barrier()
        if not self._technique.replicates:
            return
        for _ in range(2):
            for t in self._engine.tables:
                if t.replicas is not None:
                    self._sync_round(t, force=True)   # finish the round in flight
                    self._sync_round(t, force=True)   # a complete round from now
            self.barrier()

    def barrier(self) -> None:
        """Collective: wait for own operations, then for every rank to arrive."""
        with self._engine.lock:
            self._engine.flush_owner_updates()
            self._flush()
        self.wait_all()
        if self.size > 1:
            done = self._engine.transport.barrier()
            t0 = time.perf_counter()
            self._engine.transport.drive(done.is_set, done)
            dt = time.perf_counter() - t0
            self._stats["wait_seconds"] += dt
            self._stats["wait_barrier_seconds"] += dt

    # ----- introspection ---------------------------------------------------------------
    def stats(self) -> dict:
        """Counters of this rank since start or ``reset_stats``.

        Keys pulled/pushed locally (owned or replicated here) and remotely, bytes and
        messages, ``relocations`` (rows moved in) and ``relocations_out``, ``forwards``,
        ``replicas`` (held now), ``replicas_created``/``replicas_dropped``,
        ``sync_rounds``, ``max_staleness`` (clocks; <= staleness_bound), ``wait_seconds``
        (time blocked in PS calls), ``owned`` keys per table, ``local_fraction``.
        """
        with self._engine.lock:
            out = dict(self._stats)
            out["owned"] = {t.name: t.store.num_owned for t in self._engine.tables}
            out["replicas"] = sum(t.replicas.count for t in self._engine.tables
                                  if t.replicas is not None)
        pulls = out["pull_local"] + out["pull_remote"]
        out["local_fraction"] = out["pull_local"] / pulls if pulls else 1.0
        return out

    def reset_stats(self) -> None:
        """Zero this rank's counters."""
        with self._engine.lock:
            for k in self._stats:
                self._stats[k] = 0.0 if k.startswith("wait_") else 0

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


def _unique(keys: np.ndarray) -> np.ndarray:
    """Sorted unique keys; O(n) when they are already (the trainer's batches are)."""
    if len(keys) < 2 or (keys[1:] > keys[:-1]).all():
        return keys
    return np.unique(keys)


def _sum_duplicates(keys: np.ndarray, rows: np.ndarray):
    """(unique keys, summed rows). Sorting int keys is cheap; the sum runs only if needed."""
    if len(keys) < 2 or (keys[1:] > keys[:-1]).all():  # sorted unique: the trainer's case
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


def _cores_shared(comm: MPI.Comm) -> bool:
    """Collective: do ranks of this host share cores (more ranks than the cores they may
    run on, e.g. 4 ranks on 2 cores)? Then a waiting rank must not poll (spin)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        cores = node.allgather(sorted(os.sched_getaffinity(0)))
    finally:
        node.Free()
    return len(set().union(*map(set, cores))) < len(cores)


def _emulated_network() -> tuple[float, float]:
    """(one-way latency s, bandwidth bytes/s) of the emulated network, from the debug
    switches JAXPS_NET_LATENCY_US and JAXPS_NET_GBITS (unset: none)."""
    values = []
    for name, scale in (("JAXPS_NET_LATENCY_US", 1e-6), ("JAXPS_NET_GBITS", 1e9 / 8)):
        raw = os.environ.get(name, "").strip()
        try:
            value = float(raw) if raw else 0.0
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0:
            raise InputError(f"environment variable {name}={raw!r} must be a number >= 0 "
                             f"(unset it for no emulated network)")
        values.append(value * scale)
    return values[0], values[1]
