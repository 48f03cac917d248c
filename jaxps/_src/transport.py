"""The transport thread: the only thread that calls MPI on the PS communicator.

Why one thread: MPICH's blocking calls spin a core, and this machine (and CI) has
two. The user's threads never block in MPI; they enqueue messages and wait on a
``threading.Event`` (a futex: no CPU while waiting). The transport thread polls
``Improbe`` and, when nothing happens, sleeps with exponential backoff, capped at
``BUSY_MAX_SLEEP`` while messages flowed recently and at ``MAX_IDLE_SLEEP`` after a
quiet spell: an idle PS costs ~1-2% of a core, a busy one answers within ~0.2 ms. A user thread that enqueues a message wakes it at once.

Any exception in the transport thread ends the whole MPI job (``MPI.Abort``) after
printing it: a PS with a dead service thread would leave the other ranks hanging.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from typing import Callable

import numpy as np
from mpi4py import MPI

MIN_IDLE_SLEEP = 20e-6
BUSY_MAX_SLEEP = 2e-4   # cap while traffic is recent: replies are noticed within ~0.2 ms
MAX_IDLE_SLEEP = 5e-3   # cap once quiet for QUIET_AFTER seconds: ~1% of a core
QUIET_AFTER = 0.25


def abort_job(where: str) -> None:
    """Print the active exception and bring down every rank of the job."""
    sys.stderr.write(f"[jaxps rank {MPI.COMM_WORLD.Get_rank()}] fatal error in {where}:\n")
    traceback.print_exc(file=sys.stderr)
    abort_now()


def abort_now() -> None:
    """MPI_Abort on COMM_WORLD, after giving the launcher time to forward what was printed
    (Hydra kills every process at once, and output still in its pipes can be lost)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)
    MPI.COMM_WORLD.Abort(1)


class Transport:
    """Sends and receives PS messages on ``comm`` from a background thread.

    Args:
      comm: the PS's own communicator (a clone, so user messages never collide).
      handle: ``handle(source, tag, buf)`` called on the transport thread for each
        received message, in per-source FIFO order; also called for messages a rank
        sends to itself.
      stats: dict of counters updated for bytes/messages.
      poll: called on the transport thread once per loop iteration (at least every
        ``MAX_IDLE_SLEEP``), for work the handler batches over time.

    Thread-safety: ``send`` and ``barrier`` may be called from any thread.
    """

    def __init__(self, comm: MPI.Comm, handle: Callable[[int, int, np.ndarray], None],
                 stats: dict, poll: Callable[[], None] | None = None):
        self.comm = comm
        self._poll = poll
        self.rank = comm.Get_rank()
        self._handle = handle
        self._stats = stats
        self._outbox: collections.deque = collections.deque()   # (dest, tag, buf)
        self._inflight: list[tuple[MPI.Request, np.ndarray]] = []
        self._collectives: collections.deque = collections.deque()  # (start_fn, event)
        self._active: list = []  # (request, extra completion check or None, event)
        size = comm.Get_size()
        self._sent_to = np.zeros(size, np.int64)      # messages sent to each rank
        self._received_from = np.zeros(size, np.int64)
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="jaxps-transport", daemon=True)

    def start(self) -> None:
        """Start serving. Call once the handler can take messages."""
        self._thread.start()

    def send(self, dest: int, tag: int, buf: np.ndarray) -> None:
        """Queue one message; the buffer must not be modified afterwards."""
        self._outbox.append((dest, tag, buf))
        # The transport thread itself (sending replies) flushes the outbox before it sleeps
        # again; waking it is for the user's threads (an Event.set costs a lock and a notify).
        if threading.get_ident() != self._thread.ident:
            self._wake.set()

    def barrier(self) -> threading.Event:
        """Start a non-blocking barrier on the transport thread; returns its completion event.

        The transport keeps serving requests while the barrier is pending, which a
        blocking MPI_Barrier in the user's thread would not guarantee.
        """
        done = threading.Event()
        self._collectives.append((self.comm.Ibarrier, done))
        self._wake.set()
        return done

    def quiesce(self) -> threading.Event:
        """Collective: start a drain; returns an event set once every message that any rank
        sent to this one before calling ``quiesce`` has been received and handled.

        Precondition: no rank sends PS messages after calling it. ``ParameterServer.close``
        needs it because some messages (OWNER updates) are never acknowledged: one still in
        flight when the communicator is freed could be received by the next
        ParameterServer, whose new communicator may reuse the freed one's context id.
        """
        done = threading.Event()
        self._collectives.append((self._start_quiesce, done))
        self._wake.set()
        return done

    def _start_quiesce(self):
        self._flush_outbox()  # messages queued before the call count as sent before it
        # The buffers stay referenced (self) until the exchange completes.
        self._quiesce_bufs = sent, expected = self._sent_to.copy(), np.zeros_like(self._sent_to)
        req = self.comm.Ialltoall([sent, MPI.INT64_T], [expected, MPI.INT64_T])
        return req, lambda: bool((self._received_from >= expected).all())

    def close(self) -> None:
        """Stop the thread after flushing queued sends. Precondition: no more traffic expected."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        if self._inflight:
            MPI.Request.Waitall([r for r, _ in self._inflight])
            self._inflight.clear()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # noqa: BLE001 -- any failure here must end the job
            abort_job("the jaxps transport thread")

    def _loop(self) -> None:
        status = MPI.Status()
        sleep = MIN_IDLE_SLEEP
        last_traffic = time.monotonic()
        while True:
            progressed = self._flush_outbox()
            while (msg := self.comm.improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)) is not None:
                buf = np.empty(status.Get_count(MPI.BYTE), np.uint8)
                msg.Recv([buf, MPI.BYTE])
                self._stats["bytes_received"] += len(buf)
                self._stats["messages_received"] += 1
                self._received_from[status.Get_source()] += 1
                self._handle(status.Get_source(), status.Get_tag(), buf)
                progressed = True
            if self._poll is not None:
                self._poll()
            progressed |= self._progress_collectives()
            if self._inflight:
                done = MPI.Request.Testsome([r for r, _ in self._inflight])
                if done:
                    keep = set(range(len(self._inflight))) - set(done)
                    self._inflight = [self._inflight[i] for i in sorted(keep)]
            if self._stop and not self._outbox:
                return
            if progressed or self._outbox:  # (the poll may have queued messages)
                sleep = MIN_IDLE_SLEEP
                last_traffic = time.monotonic()
                continue
            self._wake.wait(sleep)
            self._wake.clear()
            quiet = time.monotonic() - last_traffic > QUIET_AFTER
            sleep = min(2 * sleep, MAX_IDLE_SLEEP if quiet else BUSY_MAX_SLEEP)

    def _flush_outbox(self) -> bool:
        progressed = False
        while self._outbox:
            dest, tag, buf = self._outbox.popleft()
            progressed = True
            if dest == self.rank:
                self._handle(dest, tag, buf)
                continue
            req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag)
            self._inflight.append((req, buf))
            self._stats["bytes_sent"] += len(buf)
            self._stats["messages_sent"] += 1
            self._sent_to[dest] += 1
        return progressed

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
