"""The lockstep ceiling (train/bench/lockstep.py) trains what a serial emulation trains.

Run by tests/test_bench.py as ``mpiexec -n N python tests/mpi_programs/lockstep_check.py
WORKLOAD STEPS``: every rank runs STEPS lockstep steps on its batches; rank 0 gathers the
partitions and replays the same steps in one process (bsp_replay.py: each step, every
rank's rows read from the same state, then every rank's deltas added) and prints the
largest difference of any table entry, as JSON.
"""

import itertools
import json
import sys

import jax
import numpy as np
from mpi4py import MPI

import jaxps
from train.bench import workloads as bench_workloads
from train.bench.lockstep import Partition, exchange_step
from train.bench.workloads import BenchOptions
from bsp_replay import replay  # beside this script (sys.path[0])


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    workload, params = bench_workloads.parse(sys.argv[1])
    steps = int(sys.argv[2])
    problem = workload.build(BenchOptions("", 0, params), comm)
    dims = {t: s.dim for t, s in problem.tables.items()}
    sizes = {t: jaxps.bucket_size(n) for t, n in problem.max_keys.items()}
    step = jax.jit(lambda rows, data: jaxps.loss_and_row_deltas(
        problem.loss_fn, problem.optimizers, dims, rows, data))
    parts = {t: Partition(s, t, rank, size) for t, s in problem.tables.items()}
    for batch in itertools.islice(problem.batches(rank, size), steps):
        exchange_step(comm, parts, step, batch, sizes)
    gathered = {t: comm.gather(p.values, root=0) for t, p in parts.items()}
    if rank != 0:
        return
    state = replay(problem, [itertools.islice(problem.batches(r, size), steps)
                             for r in range(size)], sizes)
    worst, moved = 0.0, 0.0
    for t, parts_t in gathered.items():
        table = np.empty_like(state[t])
        for r, values in enumerate(parts_t):
            table[r::size] = values
        worst = max(worst, float(np.max(np.abs(table - state[t]))))
        moved = max(moved, float(np.max(np.abs(table - jaxps.initial_table(problem.tables[t], t)))))
    print(json.dumps({"max_abs_diff": worst, "max_abs_change": moved}), flush=True)


if __name__ == "__main__":
    main()
