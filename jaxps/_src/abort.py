"""Ending the whole MPI job from any rank and thread (a dead rank must not leave others
waiting forever)."""

from __future__ import annotations

import sys
import time
import traceback

from mpi4py import MPI


def abort_job(where: str) -> None:
    """Print the active exception and bring down every rank of the job."""
    sys.stderr.write(f"[jaxps rank {MPI.COMM_WORLD.Get_rank()}] fatal error in {where}:\n")
    traceback.print_exc(file=sys.stderr)
    abort_now()


ABORT_HOOKS: list = []  # run by abort_now first (launch.py: tell the sentinels, peerwatch.py)


def abort_now() -> None:
    """MPI_Abort on COMM_WORLD, after giving the launcher time to forward what was printed
    (Hydra kills every process at once, and output still in its pipes can be lost)."""
    for hook in ABORT_HOOKS:
        try:
            hook()
        except Exception:  # noqa: BLE001 - nothing may stop the abort
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)
    MPI.COMM_WORLD.Abort(1)
