"""The sentinel process of one rank (stdlib only; run as a script by ``peerwatch.PeerWatch``).

Usage: ``python sentinel.py TOKEN RANK RANK:PID@HOST ...`` with the ranks of this host.

It lives in its own session, so the launcher's clean-up (Hydra sends SIGKILL to each rank's
process group) does not reach it, and it holds the rank's stderr. It waits on a pidfd per
rank of its host and on an abstract Unix datagram socket ``\\0jaxps-TOKEN-sRANK`` where the
ranks say ``bye R`` (ending on purpose) or ``abort R`` (about to call MPI_Abort after
printing their error). The first rank of the host that ends without either is the one that
died; the sentinel of the lowest other rank of the host prints "rank R (pid P@host) died"
on the job's stderr. A sentinel ends as soon as its own rank has ended (so the launcher,
which waits for the rank's output pipes to close, is never held up) and kills its rank if
it is still alive ``KILL_AFTER_S`` after a peer died (a launcher that does not end the job
by itself, such as ``mpiexec -disable-auto-cleanup``).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

KILL_AFTER_S = 2.0


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
    ending = False  # a rank said abort, or a death was seen: report nothing more
    kill_at = None
    while True:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic()) * 1000
        ready = [fd for fd, _ in poller.poll(timeout)]
        while True:  # read every bye first: a rank says it before it ends
            try:
                data = sock.recv(64).decode(errors="replace").split()
            except BlockingIOError:
                break
            if len(data) == 2 and data[1].isdigit():
                left.add(int(data[1]))
                ending = ending or data[0] == "abort"
        dead = []
        for fd in ready:
            if fd in fds:
                dead.append(fds.pop(fd))
                poller.unregister(fd)
                os.close(fd)
        culprits = [r for r in dead if r not in left]
        if culprits and not ending:
            ending = True
            others = [r for r in where if r not in culprits]
            if others and min(others) == me:
                names = " or ".join(f"rank {r} (pid {where[r]})" for r in sorted(culprits))
                sys.stderr.write(
                    f"[jaxps rank {me}] {names} died without a message (killed by a signal "
                    "such as SIGKILL or the out-of-memory killer, or it crashed); the job "
                    "ends\n")
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


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the ranks' to handle
    sys.exit(main(sys.argv[1:]))
