"""Remote pulls over the emulated network (JAXPS_NET_LATENCY_US set by the test): each
takes at least a round trip (2 x the one-way latency); used by tests/test_mpi.py."""

import time

import numpy as np

import jaxps

with jaxps.ParameterServer({"e": jaxps.TableSpec(100, 4)}, technique="classic") as ps:
    remote = np.arange(ps.rank ^ 1, 100, ps.size)  # all owned by the other rank
    ps.barrier()
    t0 = time.perf_counter()
    for _ in range(5):
        ps.pull("e", remote)
    per_pull = (time.perf_counter() - t0) / 5
    ps.barrier()
print(f"rank {ps.rank} remote pull {per_pull * 1e3:.2f} ms", flush=True)
