"""ParameterServer: the public face of the PS (pull/push/set/localize/intent/clock)."""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from . import access, registry, stats as counters, validate, waiting
from .errors import InputError
from .handles import Handle
from .network import Host, emulated_network, host_placement
from .policy import PolicyView
from .protocol import Tag
from .replication import ReplicatingEngine
from .store import TableState
from .sync import SyncRounds
from .tables import TableSpec
from .abort import abort_now
from .transport import SPIN_S, Transport


class ParameterServer:
    """A location-transparent parameter server over MPI, one instance per rank.

    Every rank of ``comm`` constructs it with the same arguments (collective). Any rank
    can pull/push/set any key at any time, wherever the key lives; a rank reads its
    own writes; no update is lost, also while a key is being relocated.

    Args:
      tables: table name -> TableSpec.
      technique: "classic", "replication", "relocation", "nups", "adaptive" or "lockstep" (see
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

    Attributes: ``rank`` and ``size`` in ``comm``; ``host`` (``local_rank``,
    ``local_size``, ``cores_shared``): the ranks of ``comm`` on this rank's host.

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
                 staleness_bound: int = 8, abort_on_error: bool = True,
                 peer_timeout: float | None = 60.0):
        if not isinstance(tables, Mapping) or not tables:
            raise InputError("tables must be a non-empty dict of name -> jaxps.TableSpec")
        for name, spec in tables.items():
            if not isinstance(name, str) or not isinstance(spec, TableSpec):
                raise InputError(f"tables[{name!r}] must map a str name to a jaxps.TableSpec, "
                                 f"got {type(spec).__name__}")
        self._technique = registry.make(technique)
        self._comm = (MPI.COMM_WORLD if comm is None else comm).Clone()
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        # local_rank / local_size: where this rank is among the ranks of its host (the
        # trainer runs its step on the host's accelerator number local_rank % count).
        self.host = host_placement(self._comm) if self.size > 1 else Host(0, 1, False)
        self._check_finite = check_finite
        # The same keys on every rank, so that ranks can reduce them key by key.
        self._stats = counters.new_counters()
        self._specs = dict(tables)
        states = [TableState(name, i, tables[name], self.rank, self.size)
                  for i, name in enumerate(sorted(tables))]
        self._by_name = {t.name: t for t in states}
        self._engine = ReplicatingEngine(states, self.rank, self.size, self._stats)
        self._clock = 0
        self._closed = False
        self._sync = SyncRounds(self._engine, staleness_bound, self.wait)
        if peer_timeout is not None and not (isinstance(peer_timeout, (int, float))
                                             and math.isfinite(peer_timeout) and peer_timeout > 0):
            raise InputError(f"peer_timeout must be a number of seconds > 0 or None, got "
                             f"{peer_timeout!r}")
        # The technique sees the PS only through the view; its state is its own.
        self._view = PolicyView(self._engine)
        tech = self._technique
        self._policy = state = tech.setup(self._view)
        self._engine.on_ack = lambda: tech.on_ack(self._view, state)
        self._engine.decide = lambda table, keys, origin: tech.decide_at_owner(
            self._view, state, table, keys, origin)
        if self.size > 1:
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                raise RuntimeError("jaxps needs MPI_THREAD_MULTIPLE; do not set "
                                   "mpi4py.rc.thread_level to a lower level")
            self._abort_on_error = abort_on_error
            latency, bandwidth = emulated_network()
            spin = SPIN_S if not self.host.cores_shared else 0.0
            self._engine.transport = Transport(self._comm, self._engine.on_envelope, self._stats,
                                               poll=self._engine.poll, net_latency_s=latency,
                                               net_bandwidth=bandwidth,
                                               peer_timeout=peer_timeout, spin_s=spin)
            self._engine.transport.start()
        else:
            self._abort_on_error = False
        # Lockstep: the trainer's per-step collectives, on a communicator of their own.
        self._lockstep = None
        if self._technique.steps_in_collectives and self.size > 1:
            from .lockstep import StepExchange
            self._lockstep = StepExchange(
                self._comm.Clone(), self._by_name, self._engine.lock, self._stats,
                timeout=peer_timeout, net=emulated_network())

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
        if self._lockstep is not None:
            self._lockstep.close()
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

    def _start_pull(self, t: TableState, keys: np.ndarray, out: np.ndarray) -> Handle:
        access.fence(self._engine, t, keys, self.wait)
        return access.start_pull(self._engine, t, keys, out)

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

    def _local_first(self, table: str, keys: np.ndarray) -> np.ndarray | None:
        """A permutation of validated ``keys`` that puts those this rank owns first, or
        None where it would change nothing (all or none owned). Pulls and pushes of keys in
        that order handle owned rows and replicas as two slices instead of two copies
        (kge-zipf-small, 2 ranks, 32 batches per call: ~8,700 rows of each per call)."""
        t = self._table(table)
        with self._engine.lock:
            local = t.store.slot[keys] >= 0
        other = np.flatnonzero(~local)
        if len(other) == len(keys) or access.owned_first(local, other):
            return None
        return np.concatenate([np.flatnonzero(local), other])

    def _push_checked(self, table: str, keys: np.ndarray, deltas: np.ndarray) -> Handle:
        """Push with validated, unique ``keys`` and finite float32 ``deltas`` [n, width]."""
        return self._write(Tag.PUSH, self._table(table), keys, deltas)

    def _write(self, tag: Tag, t: TableState, keys: np.ndarray, rows: np.ndarray) -> Handle:
        return access.write(self._engine, tag, t, keys, rows, fenced=self._technique.relocates)

    def push(self, table: str, keys, deltas) -> None:
        """Add ``deltas`` [len(keys), width] to the rows; duplicate keys are summed."""
        self.wait(self.push_async(table, keys, deltas))

    def push_async(self, table: str, keys, deltas) -> Handle:
        """Non-blocking push. Later pulls of these keys by this rank see the update."""
        t = self._table(table)
        keys = validate.keys(t.name, t.spec, keys)
        deltas = validate.rows(t.name, t.spec, deltas, keys, "deltas",
                               check_finite=self._check_finite)
        keys, deltas = validate.sum_duplicates(keys, deltas)
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
        keys = validate.unique(validate.keys(t.name, t.spec, keys))
        with self._engine.lock:
            h = self._technique.localize(self._view, self._policy, t.name, keys)
            self._flush()
            return h

    def intent(self, table: str, keys, start: int, end: int | None = None) -> None:
        """Declare that this rank will access ``keys`` during its clocks [start, end).

        ``end`` defaults to ``start + 1``. Cheap in bulk; the technique decides whether
        and when to act (classic ignores intents).
        """
        self._intent_unsent(table, keys, start, end)
        self._send_queued()

    def _intent_unsent(self, table: str, keys, start: int, end: int | None = None, *,
                       checked: bool = False) -> None:
        """``intent`` whose messages wait for ``_send_queued`` (the trainer signals every
        table's intents, then sends them in one envelope per owner). ``checked``: keys
        are ``_checked_keys``, sorted and unique already (the trainer's batches)."""
        t = self._table(table)
        if not checked:
            keys = validate.keys(t.name, t.spec, keys)
        start, end = validate.clock_range(start, end)
        if self.size == 1:
            return  # every key is here already: nothing to act on
        if not checked:
            keys = validate.unique(keys)
        with self._engine.lock:
            self._technique.on_intent(self._view, self._policy, t.name, keys, start, end)

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
            self._technique.on_clock(self._view, self._policy, self._clock)
            # Every clock, not only at sync clocks: a home that learns of hand-overs late
            # routes requests the long way (train.demo, 4 ranks, 10 ms clocks: relocation
            # blocked 36% -> 52% of the time when they waited for sync clocks).
            eng.flush_owner_updates()
        if self._technique.replicates:
            self._sync.tick(self._clock)
        with eng.lock:
            self._flush()
        return self._clock

    def _flush(self) -> None:
        """Send the messages this call queued, one envelope per destination (lock held)."""
        if self._engine.transport is not None:
            self._engine.flush()

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
        return waiting.wait(self._engine, handle)

    def wait_all(self) -> None:
        """Wait for every operation this rank has started (including technique actions)."""
        waiting.wait_all(self._engine)

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
                    self._sync.round(t, self._clock, force=True)  # finish the one in flight
                    self._sync.round(t, self._clock, force=True)  # a complete one from now
            self.barrier()

    def barrier(self) -> None:
        """Collective: wait for own operations, then for every rank to arrive."""
        waiting.barrier(self._engine)

    # ----- introspection ---------------------------------------------------------------
    def stats(self) -> dict:
        """Counters of this rank since start or ``reset_stats``.

        Keys pulled/pushed locally (owned or replicated here) and remotely, bytes and
        messages, ``relocations`` (rows moved in) and ``relocations_out``, ``forwards``,
        ``replicas`` (held now), ``replicas_created``/``replicas_dropped``,
        ``sync_rounds``, ``max_staleness`` (clocks; <= staleness_bound), ``wait_seconds``
        (time blocked in PS calls), ``owned`` keys per table, ``local_fraction``.
        """
        return counters.snapshot(self._engine)

    def reset_stats(self) -> None:
        """Zero this rank's counters."""
        with self._engine.lock:
            counters.reset(self._stats)

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
