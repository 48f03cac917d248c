"""The sentinel process of one rank (stdlib only; run as a script by ``peerwatch.PeerWatch``).

Usage: ``python sentinel.py TOKEN RANK RANK:PID@HOST ...`` with the ranks of this host.

It lives in its own session, so the launcher's clean-up (Hydra sends SIGKILL to each rank's
process group) does not reach it, and it holds the rank's stderr. It waits on a pidfd per
rank of its host and on an abstract Unix datagram socket ``\\0jaxps-TOKEN-sRANK`` where
the ranks say ``bye R`` (ending on purpose) or ``abort R T`` (about to call MPI_Abort
after printing their error; T: ``time.monotonic()``, one clock for a host's processes).
The first rank of the host that ends without either is the one that died, and one
sentinel prints "[jaxps] rank R (pid P@host) died ..." on the job's stderr (it tells the
others with ``claim R``). A sentinel is sure which rank died first when a poll shows that
one death alone (pidfds stay readable, and the launcher kills the others only after the
first); a sentinel that saw several at once waits ``CLAIM_WAIT_S`` for a sure one's claim,
then names them all ("rank 1 or rank 0"). An abort makes later deaths no news (the
launcher's kills for it), unless a death is already visible within ``ABORT_S`` of it: a
survivor's MPI error about the dead rank (seen: "process_vm_readv failed") aborts too.
Set ``JAXPS_SENTINEL_LOG=PREFIX`` to log what each sentinel saw. A sentinel ends as soon
as its own rank has ended (it never outlives the job by more than a moment, and holds no
launcher up), and kills its rank if it is still alive ``KILL_AFTER_S`` after a peer died
(for a launcher that does not end the job by itself, such as ``mpiexec
-disable-auto-cleanup``).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

KILL_AFTER_S = 2.0
CLAIM_WAIT_S = 0.05
CLAIM_STAGGER_S = 0.01
ABORT_S = 0.3  # below abort_now's 0.5 s wait before MPI_Abort


def main(argv: list[str]) -> int:
    token, me = argv[0], int(argv[1])
    where: dict[int, str] = {}
    for item in argv[2:]:
        r, _, w = item.partition(":")
        where[int(r)] = w
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0jaxps-{token}-s{me}".encode())
    sock.setblocking(False)
    fds = {os.pidfd_open(int(w.partition("@")[0])): r for r, w in where.items()}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdout.close()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left: set[int] = set()
    ending = False  # a death was reported, or a rank's abort is the news: report no more
    aborts: list[float] = []  # when ranks of this host said abort (CLOCK_MONOTONIC)
    claimed = False  # another sentinel of this host reported the death
    kill_at = None
    debug = os.environ.get("JAXPS_SENTINEL_LOG")
    while True:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic()) * 1000
        ready = [fd for fd, _ in poller.poll(timeout)]
        claimed = _read(sock, left, aborts) or claimed  # byes first: said before a rank ends
        dead = []
        for fd in ready:
            if fd in fds:
                dead.append(fds.pop(fd))
                poller.unregister(fd)
                os.close(fd)
        culprits = sorted(r for r in dead if r not in left)
        if debug and dead:
            with open(f"{debug}.{me}", "a") as f:
                f.write(f"{time.time():.6f} dead {dead} culprits {culprits} left {left}\n")
        if aborts and not ending and not (culprits and time.monotonic() - min(aborts) < ABORT_S):
            # A rank printed its error and aborts: the ranks the launcher kills for it are no
            # news. Unless a death is already visible now, soon after the abort was said
            # (abort_now waits 0.5 s before MPI_Abort, so none of its kills can be): that
            # death came first, and the abort was a survivor's error about it.
            ending = True
        if culprits and not ending:
            ending = True
            # pidfds stay readable: a poll that shows one death shows the first one (the
            # launcher kills the others only after it), and is sure. A later poll may show
            # several: then it is only sure that one of them was first.
            if len(culprits) == 1 or not _wait_for_claim(sock, left):
                # Sure sentinels usually wake within a millisecond of each other: in host
                # order, each waits a little for an earlier one's claim.
                time.sleep(CLAIM_STAGGER_S * sorted(where).index(me))
                claimed = _read(sock, left, aborts) or claimed
                if not claimed:
                    _claim(sock, me, where)
                    names = " or ".join(f"rank {r} (pid {where[r]})" for r in culprits)
                    sys.stderr.write(
                        f"[jaxps] {names} died without a message (killed by a signal such as "
                        "SIGKILL or the out-of-memory killer, or it crashed); the job ends\n")
                    sys.stderr.flush()
            kill_at = time.monotonic() + KILL_AFTER_S
        if me in dead:
            return 0
        if kill_at is not None and time.monotonic() >= kill_at:
            try:
                os.kill(int(where[me].partition("@")[0]), signal.SIGKILL)
            except OSError:
                pass
            return 0


def _read(sock: socket.socket, left: set, aborts: list) -> bool:
    """Read every waiting datagram: ranks that said bye or abort go to ``left``, the time of
    each abort to ``aborts``. True if another sentinel claimed the report."""
    claimed = False
    while True:
        try:
            data = sock.recv(64).decode(errors="replace").split()
        except BlockingIOError:
            return claimed
        if len(data) >= 2 and data[1].isdigit():
            if data[0] == "claim":
                claimed = True
            else:
                left.add(int(data[1]))
                if data[0] == "abort":
                    aborts.append(float(data[2]) if len(data) > 2 else 0.0)


def _wait_for_claim(sock: socket.socket, left: set) -> bool:
    """An unsure sentinel gives a sure one (which saw one death alone) a moment to speak."""
    end = time.monotonic() + CLAIM_WAIT_S
    while time.monotonic() < end:
        if select.select([sock], [], [], end - time.monotonic())[0] and _read(sock, left, []):
            return True
    return False


def _claim(sock: socket.socket, me: int, where: dict) -> None:
    token = sock.getsockname()[1:].decode().rsplit("-s", 1)[0]
    for r in where:
        if r != me:
            try:
                sock.sendto(f"claim {me}".encode(), f"\0{token}-s{r}".encode())
            except OSError:
                pass

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the ranks' to handle
    sys.exit(main(sys.argv[1:]))
