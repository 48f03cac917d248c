"""Measure the CPU an idle PS costs each rank; prints 'idle cpu share X' per rank."""

import resource
import sys
import time

from mpi4py import MPI

import jaxps


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


seconds = float(sys.argv[1])
with jaxps.ParameterServer({"e": jaxps.TableSpec(10_000, 16)}) as ps:
    ps.barrier()
    time.sleep(0.5)  # let start-up work settle
    c0, t0 = cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    share = (cpu_seconds() - c0) / (time.perf_counter() - t0)
    print(f"rank {MPI.COMM_WORLD.Get_rank()} idle cpu share {share:.4f}", flush=True)
