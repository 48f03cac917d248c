"""Rank 2 stops itself (SIGSTOP, as a hung process or a lost host would look) while the
others train on; used by tests/test_mpi.py. The others' watchdog must end the job,
naming rank 2, within peer_timeout plus a few seconds."""

import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

import jaxps

timeout = float(sys.argv[1])
rank = MPI.COMM_WORLD.Get_rank()
with jaxps.ParameterServer({"e": jaxps.TableSpec(1000, 4)}, technique="adaptive",
                           peer_timeout=timeout) as ps:
    ps.barrier()
    if rank == 2:
        os.kill(os.getpid(), signal.SIGSTOP)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 * timeout:  # pulls that need rank 2 now and then
        ps.pull("e", np.arange(1000))
        ps.advance_clock()
    ps.barrier()
print(f"rank {rank} finished normally", flush=True)
