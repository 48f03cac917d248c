"""Lockstep: classic's static partition, with a trainer's rows moved in per-step collectives.

Why a technique of its own: the PS protocol (a service thread that polls, intents acted on
apart from the step, acknowledgements, fences, sync rounds) costs the training ranks 11-14x
the CPU of the row moves themselves (docs/bench.md, "Fourth round": ~1,480 us per step and
rank against 102-132 us for bare ``Sendrecv`` of the same rows). Here the training thread
makes, per step, one ``Alltoall`` of counts and three ``Alltoallv`` (keys, rows, deltas)
covering every table and every peer, and nothing else: no message handling, no
acknowledgement, no wake-up of the service thread.

Semantics (bulk-synchronous): key k lives on rank k % size for ever, as with classic. At
step s every rank reads rows that hold every rank's deltas of steps < s and nothing of
step s; after step s the owners have added every rank's deltas of s. So no update is lost
and every rank reads its own writes; the staleness is exactly one step for other ranks'
writes. The cost: each step waits for the slowest rank (twice), and every row a rank does
not own travels at every step that touches it.

Only ``SparseTrainer.train_epoch`` moves rows this way, and it is collective: every rank
of the PS must run it, at the same time, as many times. Ranks with fewer batches in an
epoch take part in the others' remaining steps with empty requests (a done flag rides
with the counts), so uneven shards never hang. All other PS calls (``pull``, ``push``,
checkpoints, evaluation between epochs) are classic's, served by the PS as usual.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .abort import abort_job
from .errors import ProtocolError
from .store import TableState
from .techniques import Classic


class Lockstep(Classic):
    """Classic's partition (key k on rank k % size); ``SparseTrainer`` moves each step's
    rows and deltas in collectives made by the training thread (``StepExchange``)."""

    name = "lockstep"
    steps_in_collectives = True


class StepExchange:
    """The collectives of lockstep training steps for one PS (one per ParameterServer).

    Args:
      comm: a communicator of the PS's ranks used for nothing else (its own clone).
      tables: the PS's TableStates by name; lock: the PS's lock (held while rows are read
        or added, so that the PS's own service of other calls sees whole steps).
      stats: the PS's counters (pulls and pushes, local and remote; bytes; wait seconds).
      timeout: seconds a collective may wait for the other ranks before the job ends
        (the PS's peer_timeout; None: for ever).
      net: the emulated network's (one-way latency s, bandwidth bytes/s) (0: none; the
        PS's JAXPS_NET_LATENCY_US / JAXPS_NET_GBITS): each collective then also takes the
        latency plus the time of the largest buffer it sends to one peer.

    Call ``pull`` then ``push`` once per step on every rank, from one thread.
    """

    def __init__(self, comm, tables: dict[str, TableState], lock, stats: dict, *,
                 timeout: float | None, net: tuple[float, float] = (0.0, 0.0)):
        self._comm = comm
        self._timeout = timeout
        self._latency, self._bandwidth = net
        self._since: float | None = None  # when the collective now waited for started
        self._closed = threading.Event()
        if timeout is not None:
            threading.Thread(target=self._watch, name="jaxps-lockstep-watchdog",
                             daemon=True).start()
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._tables = tables
        self._lock = lock
        self._stats = stats
        self._step = None  # what pull learnt, for the push of the same step

    def close(self) -> None:
        """Collective (the PS's ``close``): stop the watchdog, free the communicator."""
        self._closed.set()
        self._comm.Free()

    def pull(self, names: list[str], keys: dict[str, np.ndarray],
             out: dict[str, np.ndarray], *, done: bool) -> bool:
        """Collective: the rows of ``keys[t]`` (validated, unique) into ``out[t][:n]``,
        for every table of ``names`` (the same list, in the same order, on every rank).

        ``done``: this rank has no batch (``keys`` must then be empty); it still serves
        the others. Returns False, having moved nothing, once every rank is done; then
        the step has no ``push``.
        """
        size, ntab = self.size, len(names)
        widths = np.array([self._tables[t].spec.width for t in names], np.int64)
        sent = np.zeros((size, ntab + 1), np.int64)  # sent[d, i]: keys of table i to rank d
        order = []
        for i, t in enumerate(names):
            owner = keys[t] % size
            order.append(np.argsort(owner, kind="stable"))
            sent[:, i] = np.bincount(owner, minlength=size)
        sent[:, ntab] = done
        got = np.empty_like(sent)
        waited = self._collective(self._comm.Ialltoall(sent, got))
        if got[:, ntab].all():  # every rank said done, and all saw the same flags
            self._stats["wait_pull_seconds"] += waited
            self._stats["wait_seconds"] += waited
            return False
        sent, got = sent[:, :ntab], got[:, :ntab]
        # Positions (in the batch's key order) of the keys sent to each rank, per table:
        # blocks rank-major, then table, as the buffers are packed (a loop over ranks and
        # tables, never over keys).
        ends = np.cumsum(sent, axis=0)
        mine = [(i, t, order[i][ends[d, i] - sent[d, i]:ends[d, i]])
                for d in range(size) for i, t in enumerate(names)]
        keys_out = np.concatenate([keys[t][pos] for _, t, pos in mine])
        asked_all = np.empty(int(got.sum()), np.int64)
        waited += self._collective(self._comm.Ialltoallv([keys_out, sent.sum(1)],
                                                         [asked_all, got.sum(1)]),
                                   self._to_peer(8 * sent.sum(1)))
        asked, at = [], 0  # (table, slots) per block of the requests, source-major
        with self._lock:
            for d in range(size):
                for i, t in enumerate(names):
                    block = asked_all[at:at + got[d, i]]
                    at += got[d, i]
                    slots = self._tables[t].store.slot[block]
                    if len(slots) and slots.min() < 0:
                        raise ProtocolError(f"lockstep: rank {d} asked rank {self.rank} for "
                                            f"keys of table {t!r} it does not hold")
                    asked.append((self._tables[t], slots.astype(np.intp)))
            rows_out = np.concatenate([t.store.values[s].reshape(-1) for t, s in asked])
        rows_in = np.empty(int((sent @ widths).sum()), np.float32)
        waited += self._collective(self._comm.Ialltoallv([rows_out, got @ widths],
                                                         [rows_in, sent @ widths]),
                                   self._to_peer(4 * (got @ widths)))
        at = 0
        for i, t, pos in mine:
            n = len(pos) * widths[i]
            if n:
                out[t][pos] = rows_in[at:at + n].reshape(len(pos), widths[i])
            at += n
        self._step = (mine, asked, sent, got, widths)
        self._count("pull", sent, got, widths, waited)
        return True

    def push(self, deltas: dict[str, np.ndarray]) -> None:
        """Collective: add ``deltas[t]`` (float32, at least n rows: those of the keys of
        the step's ``pull``, in their order) at the keys' owners; every rank's deltas of
        this step, in rank order. A done rank passes ``{}``."""
        mine, asked, sent, got, widths = self._step
        self._step = None
        parts = [deltas[t][pos].reshape(-1) for _, t, pos in mine if len(pos)]
        deltas_out = np.concatenate(parts) if parts else np.empty(0, np.float32)
        deltas_in = np.empty(int((got @ widths).sum()), np.float32)
        waited = self._collective(self._comm.Ialltoallv([deltas_out, sent @ widths],
                                                        [deltas_in, got @ widths]),
                                  self._to_peer(4 * (sent @ widths)))
        at = 0
        with self._lock:
            for table, slots in asked:
                # One sender's keys are unique, but two senders may push the same key:
                # each sender's block is added on its own (a loop over ranks and tables).
                n = len(slots) * table.spec.width
                if n:
                    table.store.add(slots, deltas_in[at:at + n].reshape(len(slots), -1))
                at += n
        self._count("push", sent, got, widths, waited)

    def _collective(self, request, nbytes: int = 0) -> float:
        """Wait for a started collective; returns the seconds waited. ``nbytes``: the
        largest buffer it sends to one peer (for the emulated network's bandwidth).

        A blocking wait (MPI's own progress, without the GIL): polling it from Python
        instead (Test, then sleeps) made the peers wait for each other's next poll and cost
        2/3 of the throughput (kge-zipf-small, 2 ranks: 88k against 373k examples/s). The
        watchdog thread ends the job if it lasts longer than ``timeout``.
        """
        t0 = self._since = time.perf_counter()
        request.Wait()
        self._since = None
        if self._latency or self._bandwidth:
            # Every peer's data is here only one network delay after it was sent (all
            # ranks send at once, so one delay per collective, as over a real network).
            time.sleep(self._latency + (nbytes / self._bandwidth if self._bandwidth else 0))
        return time.perf_counter() - t0

    def _to_peer(self, nbytes: np.ndarray) -> int:
        """The largest of ``nbytes`` (per destination rank) that goes to another rank."""
        return int(np.delete(nbytes, self.rank).max())

    def _watch(self) -> None:
        """The watchdog: a collective waiting longer than ``timeout`` means the ranks called
        ``train_epoch`` a different number of times (or one is stuck): end the job with
        that message, never hang. Wakes ~once a second (a quarter of ``timeout`` at most)."""
        period = min(1.0, self._timeout / 4)
        while not self._closed.wait(period):
            since = self._since
            if since is not None and time.perf_counter() - since > self._timeout:
                try:
                    raise ProtocolError(
                        f"lockstep: rank {self.rank} waited over {self._timeout:g} s "
                        f"(peer_timeout) for the other ranks in a training step's exchange; "
                        f"every rank must call SparseTrainer.train_epoch as often as the "
                        f"others, at the same time")
                except ProtocolError:
                    abort_job("the lockstep step exchange")

    def _count(self, kind: str, sent: np.ndarray, got: np.ndarray, widths: np.ndarray,
               waited: float) -> None:
        """Counters of one pull or push: keys local and remote, and the bytes that went to
        and came from other ranks (the own block is a local copy, not counted)."""
        stats, rank = self._stats, self.rank
        own = int(sent[rank].sum())
        stats[f"{kind}_local"] += own
        stats[f"{kind}_remote"] += int(sent.sum()) - own
        row_bytes = 4 * widths
        others = np.arange(self.size) != rank
        # pull: keys out and rows back; push: deltas out.
        out_keys = int(sent[others].sum()) * 8 if kind == "pull" else 0
        in_keys = int(got[others].sum()) * 8 if kind == "pull" else 0
        sent_rows = got if kind == "pull" else sent
        recv_rows = sent if kind == "pull" else got
        stats["bytes_sent"] += out_keys + int((sent_rows[others] @ row_bytes).sum())
        stats["bytes_received"] += in_keys + int((recv_rows[others] @ row_bytes).sum())
        stats["messages_sent"] += self.size - 1
        stats["messages_received"] += self.size - 1
        stats[f"wait_{kind}_seconds"] += waited
        stats["wait_seconds"] += waited
