"""Name a rank that died without a word (SIGKILL, the out-of-memory killer, a crash).

A rank killed outright cannot print anything, so someone else must say who it was, and it
cannot be a peer rank: measured with MPICH's Hydra 5.0.2 (the ``mpich`` wheel; ``strace -f
-e trace=kill`` of ``mpiexec -n 3`` while rank 1 is SIGKILLed, docs/reliability.md), the
proxy that reaps the dead rank sends SIGKILL to every other rank's process group at once,
with nothing catchable first (no SIGTERM), and the job ends within a second with Hydra's
"BAD TERMINATION ... PID P RUNNING AT host". A watcher thread inside the surviving ranks
(waiting on pidfds of its peers) never got to run (0 of 10 trials). With ``mpiexec
-disable-auto-cleanup`` the proxy sends SIGUSR1 first and such a thread named the rank in 2
of 3 trials (in the third, MPICH's SIGUSR1 handler's PMI query of the dead processes crashed
the proxy: "unable to forward PMI response"), and, with SIGUSR1 ignored, in 3 of 5 (in the
other two the proxy SIGKILLed the survivors 0.5 ms after its SIGUSR1).

So each rank starts a **sentinel** (``sentinel.py``, stdlib only, ~10 MiB): a child process
in its own session (out of reach of the process-group kill) that shares the rank's stderr
and watches every rank of its host through pidfds. The first of them to end without having
said "bye" is the one that died, and one sentinel prints ``[jaxps rank R] rank D (pid
P@host) died without a message ...``. Ranks say bye (``leaving``) when they end on purpose
(``run_main`` returned, ``JobExit``) and "abort" before ``MPI_Abort`` (their error was
printed; the ranks then killed by the launcher are no news). A rank on another host that
dies is named by the transport's heartbeat watchdog (``peer_timeout``), or only by rank 0's
``N ranks: rank r = pid P@host`` table when the launcher ends the job first.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from mpi4py import MPI

_SENTINEL = Path(__file__).with_name("sentinel.py")


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return -1


class PeerWatch:
    """Collective over ``comm``: start this rank's sentinel; ``table`` is ``[(pid, host)]``.

    Preconditions: called once per process by every rank of ``comm`` (it uses a bcast and
    two allgathers: the last one waits until every sentinel listens), before any rank can
    end. Does nothing where pidfds or
    abstract sockets are missing (not Linux, Linux < 5.3): then only the pid table maps a
    PID to its rank.
    """

    def __init__(self, comm: MPI.Comm, table: list[tuple[int, str]]):
        self.rank = comm.Get_rank()
        token = comm.bcast(os.urandom(6).hex() if self.rank == 0 else None, root=0)
        spaces = comm.allgather(_pidns())
        me = (table[self.rank][1], spaces[self.rank])
        local = [r for r in range(len(table)) if (table[r][1], spaces[r]) == me]
        self._peers = [f"\0jaxps-{token}-s{r}".encode() for r in local]
        self._sock: socket.socket | None = None
        self._said = False
        self._proc: subprocess.Popen | None = None
        ok = False
        if hasattr(os, "pidfd_open") and sys.platform.startswith("linux"):
            ok = self._start(token, local, table)
        if not all(comm.allgather(ok)):  # every sentinel listening before anyone says bye
            if self._proc is not None:
                self._proc.kill()  # a sentinel left without its peers' byes would misreport
            self._sock = None

    def _start(self, token: str, local: list[int], table: list[tuple[int, str]]) -> bool:
        args = [sys.executable, "-S", "-E", str(_SENTINEL), token, str(self.rank),
                *(f"{r}:{table[r][0]}@{table[r][1]}" for r in local)]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    start_new_session=True, close_fds=True)
            self._proc = proc
            ready = select.select([proc.stdout], [], [], 10.0)[0]
            if not ready or proc.stdout.readline() != b"ready\n":
                proc.kill()
                return False
            proc.stdout.close()
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            return True
        except OSError:
            return False

    def leaving(self, kind: str = "bye") -> None:
        """Tell this host's sentinels that this rank ends on purpose: ``"bye"`` (a normal
        end) or ``"abort"`` (its error is printed and it is about to abort the job).
        Idempotent; never raises."""
        if self._said or self._sock is None:
            return
        self._said = True
        for addr in self._peers:
            try:
                self._sock.sendto(f"{kind} {self.rank} {time.monotonic():.6f}".encode(), addr)
            except OSError:
                pass  # that sentinel ended already
