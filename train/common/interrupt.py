"""SIGINT/SIGTERM during training: all ranks stop at the same batch, so a checkpoint can be taken.

A signal usually reaches one rank (``kill`` of one process, a scheduler's SIGTERM to each at
slightly different times), but a checkpoint is a collective at a step boundary that every rank
must reach at the same batch. So the handler only sets a flag, and the ranks agree on it with
a non-blocking reduction every few batches (see `StopRequest`).
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time

import numpy as np
from mpi4py import MPI


class StopRequest:
    """SIGINT/SIGTERM: ask the ranks to stop at the next common batch boundary.

    The handler only sets a flag. Every ``EVERY`` batches each rank posts a non-blocking
    MAX-reduction of its flag (on its own duplicate of the communicator, from the batch
    thread) and reads the one posted ``LAG`` batches earlier, so all ranks see the same
    answer at the same batch and stop there, at most EVERY + LAG batches after the signal;
    a second signal interrupts at once.
    """

    EVERY = 16  # batches between two posted reductions
    LAG = 32    # batches between posting a reduction and reading it (a multiple of EVERY)

    def __init__(self, comm):
        self.comm = comm.Dup() if comm.Get_size() > 1 else None
        self.requested = threading.Event()
        self.signal_name = None
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self.comm is not None:
            self.comm.Free()
            self.comm = None

    def _handle(self, signum, frame):
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.requested.set()
        sys.stderr.write(f"[jaxps rank {MPI.COMM_WORLD.Get_rank()}] {self.signal_name}: "
                         "finishing the current step, then writing a checkpoint (send it "
                         "again to stop at once)\n")
        sys.stderr.flush()

    def agreed(self) -> bool:
        """Collective (blocking, between epochs): did any rank ask to stop?"""
        if self.comm is None:
            return self.requested.is_set()
        flag = np.array([int(self.requested.is_set())], np.int32)
        self.comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MAX)
        return bool(flag[0])

    def batches(self, batches, common: int, stopped: list):
        """``batches`` until the ranks agree to stop; ``common``: batches every rank has.
        Appends the number of batches yielded to ``stopped`` when it stopped early.

        A reduction posted at batch i is read at batch i + LAG: by then every rank has
        almost always posted it, so reading it rarely waits (waiting would tie the ranks'
        batch threads together every few batches)."""
        pending: collections.deque = collections.deque()
        for index, batch in enumerate(batches):
            if self.comm is None:  # one rank: no one to agree with
                if self.requested.is_set():
                    stopped.append(index)
                    return
            elif index % self.EVERY == 0 and index < common:
                if pending and pending[0][0] + self.LAG == index and self._result(pending.popleft()):
                    stopped.append(index)
                    return
                if index + self.LAG < common:
                    pending.append(self._post(index))
            yield batch

    def _post(self, index: int):
        flag = np.array([int(self.requested.is_set())], np.int32)
        out = np.zeros(1, np.int32)
        # Both buffers stay referenced (in the tuple) until the reduction completed.
        return index, flag, out, self.comm.Iallreduce(flag, out, op=MPI.MAX)

    @staticmethod
    def _result(pending) -> bool:
        _, _, out, request = pending
        while not request.Test():  # sleep, not spin: the cores are shared with training
            time.sleep(1e-4)
        return bool(out[0])
