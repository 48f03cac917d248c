"""Rank 1 fails while the others wait on it; used by tests/test_mpi.py.

Default: the error escapes the ``with ParameterServer`` block. ``--outside``: the
error is raised after the block was left without closing (excepthook path: the program
installs the hooks with ``jaxps.install_abort_hooks()``, as ``jaxps.run_main`` does).
"""

import sys
import time

import numpy as np
from mpi4py import MPI

import jaxps

rank = MPI.COMM_WORLD.Get_rank()
outside = "--outside" in sys.argv
if outside:
    jaxps.install_abort_hooks()
ps = jaxps.ParameterServer({"e": jaxps.TableSpec(1000, 4)}, technique="relocation")
if outside:
    if rank == 1:
        time.sleep(0.5)
        raise RuntimeError("deliberate failure on rank 1")
    ps.barrier()  # waits for rank 1 forever unless the job is aborted
else:
    with ps:
        if rank == 1:
            time.sleep(0.5)
            raise RuntimeError("deliberate failure on rank 1")
        ps.pull("e", np.arange(1000))
        ps.barrier()  # rank 1 never arrives
print(f"rank {rank} finished normally", flush=True)
