"""The transport: envelopes over MPI, progress driven by whichever thread needs it.

Why this shape: MPICH's blocking calls spin a core, and this machine (and CI) has two
cores shared by the ranks, their XLA threads and the PS. Nothing here blocks in MPI:

  * Sends go out from the thread that makes them (``post``: one ``Isend`` of one
    envelope per destination), with the engine lock held, so per-pair order is the order
    of the state changes. No thread is woken for a send.
  * Receiving is ``progress()``: probe, receive and handle whatever arrived. The user's
    thread calls it while it waits for a reply (``ParameterServer.wait``), so the answer
    it waits for is handled without a thread switch; the service thread calls it
    otherwise, to answer peers while the user's thread computes.
  * The service thread sleeps on an ``Event`` between rounds (a futex: no CPU), for
    ``MIN_SLEEP`` after traffic, doubling up to ``BUSY_MAX_SLEEP`` while peers recently
    sent requests that they wait for (``URGENT``: pulls, relocations), up to
    ``RELAXED_MAX_SLEEP`` while only messages that were signalled ahead flowed (intents,
    syncs, drops: the adaptive technique's traffic), and up to ``MAX_IDLE_SLEEP`` after
    ``QUIET_AFTER`` seconds without traffic. While the user's thread drives progress
    itself (waiting), the service thread stands down.
  * A waiting thread polls without sleeping for ``SPIN_S`` (where each rank has a core of
    its own), then backs off like the service thread: a timed sleep costs ~70 us more
    than asked on this VM (ping-pong round trip through mpi4py: 4 us busy-polling, 15 us
    with sched_yield, 210 us with sleep(0)).

Emulated network (``net_latency_s``, ``net_bandwidth``): each envelope carries its send
time; a received envelope is handled only once ``send time + latency + its bytes /
bandwidth`` has passed (after the previous one from the same peer: FIFO holds), as a
network would deliver it. The sender's CPU is not delayed.

Watchdog (``peer_timeout``): the service thread sends an empty envelope to each peer it
has sent nothing to for a quarter of the timeout, and ends the job, naming the rank, once a
peer has sent nothing for ``peer_timeout`` seconds: a stopped or hung rank, or one whose
host is gone, would otherwise stall every rank that waits for it, forever.

Any exception in the service thread ends the whole MPI job (``MPI.Abort``) after printing
it: a PS with a dead service thread would leave the other ranks hanging.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Callable

import numpy as np
from mpi4py import MPI

from . import protocol
from .abort import abort_job, abort_now
from .network import EmulatedNetwork

MIN_SLEEP = 50e-6
BUSY_MAX_SLEEP = 2e-4      # cap while peers wait for answers: a pull waits <= ~0.3 ms
RELAXED_MAX_SLEEP = 2e-3   # cap while only signalled-ahead traffic flows
MAX_IDLE_SLEEP = 5e-3      # cap once quiet for QUIET_AFTER seconds: ~1% of a core
QUIET_AFTER = 0.25
URGENT_FOR = 0.05          # seconds an urgent request keeps the service thread quick
SPIN_S = 3e-4  # about one service interval of a busy peer: its answer usually lands here
ENVELOPE_TAG = 7


class PeerTimeout(RuntimeError):
    """A peer sent nothing (not even a heartbeat) for ``peer_timeout`` seconds."""


class Transport:
    """Envelopes between the ranks of ``comm``, and the thread that serves peers.

    Args:
      comm: the PS's own communicator (a clone, so user messages never collide).
      handle: ``handle(source, envelope)`` for each received envelope, in per-source FIFO
        order, on whichever thread runs ``progress``.
      stats: dict of counters updated for bytes/messages (envelopes).
      poll: called once per progress round (at least every ``MAX_IDLE_SLEEP`` seconds),
        for work the handler batches over time.
      net_latency_s, net_bandwidth: the emulated network (one-way seconds, bytes/s; 0 =
        none).
      peer_timeout: seconds of silence after which a peer is declared gone and the job
        ends (None: never).
      spin_s: how long a waiting thread polls before it sleeps (0 where ranks share
        cores: its polls would take the core from a rank that has work).

    Thread-safety: ``post`` with the caller's engine lock held; ``progress``, ``barrier``
    and ``quiesce`` from any thread.
    """

    def __init__(self, comm: MPI.Comm, handle: Callable[[int, np.ndarray], None],
                 stats: dict, poll: Callable[[], None] | None = None, *,
                 net_latency_s: float = 0.0, net_bandwidth: float = 0.0,
                 peer_timeout: float | None = None, spin_s: float = SPIN_S):
        self.comm = comm
        self._poll = poll
        self.rank = comm.Get_rank()
        self._handle = handle
        self._stats = stats
        self._inflight: list[tuple[MPI.Request, np.ndarray]] = []
        self._inflight_lock = threading.Lock()  # post (any thread) vs Testsome (progress)
        self._collectives: collections.deque = collections.deque()  # (start_fn, event)
        self._active: list = []  # (request, extra completion check or None, event)
        size = comm.Get_size()
        self._sent_to = np.zeros(size, np.int64)      # envelopes sent to each rank
        self._received_from = np.zeros(size, np.int64)
        self._net = EmulatedNetwork(size, net_latency_s, net_bandwidth)
        self._progress_lock = threading.Lock()
        self._spin_s = spin_s
        self._peer_timeout = peer_timeout
        now = time.monotonic()
        self._heard = np.full(size, now)        # last envelope from each peer
        self._told = np.full(size, now)         # last envelope to each peer
        self._heartbeats = peer_timeout is not None and size > 1
        self._next_watch = now
        self._drivers = 0  # user threads driving progress themselves (waiting)
        self.urgent_at = -1.0  # when a peer last sent a request it waits for (handler sets)
        self._wake = threading.Event()
        self._stop = False
        self._status = MPI.Status()
        self._thread = threading.Thread(target=self._run, name="jaxps-transport", daemon=True)

    def start(self) -> None:
        """Start the service thread. Call once the handler can take messages."""
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The service thread's native id (for per-thread CPU accounting)."""
        return self._thread.native_id

    def post(self, dest: int, parts: list[np.ndarray]) -> None:
        """Send the messages ``parts`` to ``dest`` as one envelope. Engine lock held;
        the buffers must not be modified afterwards."""
        buf = protocol.envelope(parts, time.monotonic_ns() if self._net.on else 0)
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=ENVELOPE_TAG)
        with self._inflight_lock:
            self._inflight.append((req, buf))
        self._told[dest] = time.monotonic()
        self._stats["bytes_sent"] += len(buf)
        self._stats["messages_sent"] += 1
        self._sent_to[dest] += 1

    # ----- progress ---------------------------------------------------------------------
    def progress(self) -> bool:
        """Receive and handle what has arrived (and is due), advance collectives and sends.
        Returns whether anything happened; a no-op if another thread is at it."""
        if not self._progress_lock.acquire(blocking=False):
            return False
        try:
            return self._progress()
        finally:
            self._progress_lock.release()

    def _progress(self) -> bool:
        progressed = False
        status = self._status
        while (msg := self.comm.improbe(MPI.ANY_SOURCE, ENVELOPE_TAG, status)) is not None:
            buf = np.empty(status.Get_count(MPI.BYTE), np.uint8)
            msg.Recv([buf, MPI.BYTE])
            source = status.Get_source()
            self._heard[source] = time.monotonic()
            self._stats["bytes_received"] += len(buf)
            self._stats["messages_received"] += 1
            self._received_from[source] += 1
            progressed = True
            if self._net.on:
                self._net.hold(source, buf)
            else:
                self._handle(source, buf)
        for source, buf in self._net.due():
            self._handle(source, buf)
            progressed = True
        if self._poll is not None:
            self._poll()
        if self._collectives or self._active:
            progressed |= self._progress_collectives()
        if len(self._inflight) > 8:
            with self._inflight_lock:
                done = MPI.Request.Testsome([r for r, _ in self._inflight])
                if done:
                    keep = set(range(len(self._inflight))) - set(done)
                    self._inflight = [self._inflight[i] for i in sorted(keep)]
        return progressed

    def _watch_peers(self) -> None:
        """Heartbeats to quiet peers; PeerTimeout for a peer silent past the timeout.
        Looks at most every 1/8 of the timeout (the loop runs thousands of times a second)."""
        now = time.monotonic()
        if now < self._next_watch:
            return
        if now - self._next_watch > self._peer_timeout / 4:
            # This rank itself did not run for a while (the whole job was stopped, e.g.
            # Ctrl-Z of mpiexec, or a host that slept): the peers' silence is its own.
            self._heard[:] = now
        self._next_watch = now + self._peer_timeout / 8
        quiet = np.flatnonzero(now - self._told > self._peer_timeout / 4)
        for dest in quiet:
            if dest != self.rank:
                self.post(int(dest), [])  # an empty envelope: "still here"
        silent = now - self._heard > self._peer_timeout
        silent[self.rank] = False
        if silent.any():
            peer = int(np.flatnonzero(silent)[0])
            raise PeerTimeout(
                f"rank {peer} has sent nothing for {now - self._heard[peer]:.0f} s "
                f"(peer_timeout={self._peer_timeout:g} s): it is stopped, hung, or its host "
                f"is gone; ending the job")

    def drive(self, done: Callable[[], bool], event: threading.Event) -> None:
        """Make progress from the calling thread until ``done()``: polls for ``SPIN_S``
        (yielding the core between polls), then waits on ``event`` between rounds,
        backing off like the service thread."""
        self._drivers += 1
        try:
            spin_until = time.perf_counter() + self._spin_s
            sleep = MIN_SLEEP
            while not done():
                if self.progress():
                    spin_until = time.perf_counter() + self._spin_s
                    sleep = MIN_SLEEP
                    continue
                if time.perf_counter() < spin_until:
                    # A plain poll, not sched_yield: a yield hands the core to any other
                    # runnable process, even a niced or SCHED_IDLE one, which then keeps it
                    # until the next scheduler tick (ms; measured: 2 ranks at a third of
                    # their speed beside background jobs). The spin is short and only runs
                    # where each rank has a core of its own (``spin_s``).
                    continue
                if event.wait(sleep):
                    return
                sleep = min(2 * sleep, BUSY_MAX_SLEEP)
        finally:
            self._drivers -= 1

    # ----- collectives ---------------------------------------------------------------------
    def barrier(self) -> threading.Event:
        """Start a non-blocking barrier; returns its completion event (set by progress).

        The PS keeps serving requests while the barrier is pending, which a blocking
        MPI_Barrier in the user's thread would not guarantee.
        """
        done = threading.Event()
        self._collectives.append((self.comm.Ibarrier, done))
        self._wake.set()
        return done

    def quiesce(self) -> threading.Event:
        """Collective: start a drain; returns an event set once every envelope that any rank
        sent to this one before calling ``quiesce`` has been received and handled.

        Precondition: no rank sends PS messages after calling it. ``ParameterServer.close``
        needs it because some messages (OWNER updates) are never acknowledged: one still in
        flight when the communicator is freed could be received by the next
        ParameterServer, whose new communicator may reuse the freed one's context id.
        """
        done = threading.Event()
        self._heartbeats = False  # nothing may be sent after the count below
        self._collectives.append((self._start_quiesce, done))
        self._wake.set()
        return done

    def _start_quiesce(self):
        # The buffers stay referenced (self) until the exchange completes.
        self._quiesce_bufs = sent, expected = self._sent_to.copy(), np.zeros_like(self._sent_to)
        req = self.comm.Ialltoall([sent, MPI.INT64_T], [expected, MPI.INT64_T])
        return req, lambda: bool((self._received_from >= expected).all()) and self._net.empty

    def _progress_collectives(self) -> bool:
        progressed = False
        while self._collectives:
            start, done = self._collectives.popleft()
            started = start()
            req, check = started if isinstance(started, tuple) else (started, None)
            self._active.append((req, check, done))
            progressed = True
        still = []
        for req, check, done in self._active:
            # Test() of a completed request keeps answering True (it is REQUEST_NULL).
            if req.Test() and (check is None or check()):
                done.set()
                progressed = True
            else:
                still.append((req, check, done))
        self._active = still
        return progressed

    # ----- the service thread ----------------------------------------------------------------
    def close(self) -> None:
        """Stop the thread and complete the sends. Precondition: no more traffic expected."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        if self._inflight:
            MPI.Request.Waitall([r for r, _ in self._inflight])
            self._inflight.clear()

    def _run(self) -> None:
        try:
            self._loop()
        except PeerTimeout as e:
            sys.stderr.write(f"[jaxps rank {MPI.COMM_WORLD.Get_rank()}] {e}\n")
            abort_now()
        except BaseException:  # noqa: BLE001 -- any failure here must end the job
            abort_job("the jaxps transport thread")

    def _loop(self) -> None:
        sleep = MIN_SLEEP
        last_traffic = time.monotonic()
        while not self._stop:
            if self._heartbeats:
                self._watch_peers()
            if self._drivers == 0 and self.progress():
                sleep = MIN_SLEEP
                last_traffic = time.monotonic()
                continue
            if self._drivers:
                sleep = BUSY_MAX_SLEEP  # the waiting thread polls (delayed envelopes too)
            elif not self._net.empty:  # wake when the next emulated delivery is due
                sleep = min(sleep, self._net.next_due_s())
            # Never a zero wait: a loop that does not block would hold the GIL until the
            # interpreter's switch interval (5 ms) takes it away.
            self._wake.wait(max(sleep, MIN_SLEEP / 4))
            self._wake.clear()
            now = time.monotonic()
            if now - last_traffic > QUIET_AFTER:
                cap = MAX_IDLE_SLEEP
            elif now - self.urgent_at < URGENT_FOR:
                cap = BUSY_MAX_SLEEP
            else:
                cap = RELAXED_MAX_SLEEP
            sleep = max(min(2 * sleep, cap), MIN_SLEEP)
