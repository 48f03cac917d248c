"""Every rank is stopped at once for longer than peer_timeout (as Ctrl-Z of mpiexec, or a
host that sleeps, would do), then continued: the job must go on, not declare its peers
dead. Rank 0 stops the group after the first barrier and a helper continues it; used by
tests/test_mpi.py."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from mpi4py import MPI

import jaxps

timeout = float(sys.argv[1])
world = MPI.COMM_WORLD
pids = world.allgather(os.getpid())
with jaxps.ParameterServer({"e": jaxps.TableSpec(1000, 4)}, technique="adaptive",
                           peer_timeout=timeout) as ps:
    ps.barrier()
    if world.Get_rank() == 0:
        # A separate process stops every rank, waits 2 x peer_timeout, continues them.
        script = (f"import os, signal, time\npids = {pids!r}\n"
                  f"[os.kill(p, signal.SIGSTOP) for p in pids]\ntime.sleep({2 * timeout})\n"
                  f"[os.kill(p, signal.SIGCONT) for p in pids]\n")
        subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4 * timeout:
        ps.pull("e", np.arange(1000))
        ps.advance_clock()
    ps.barrier()
print(f"rank {world.Get_rank()} finished normally", flush=True)
