"""Lockstep ranks that disagree on how many epochs to train end the job, never hang.

Run by tests/test_lockstep.py under ``mpiexec -n 2``: rank 0 calls ``train_epoch`` twice,
rank 1 once and then closes its PS; rank 0's second epoch waits for a peer that never
comes, and the watchdog ends the job after ``peer_timeout`` (2 s here).
"""

import itertools
import sys

from mpi4py import MPI

import jaxps
from train.bench import workloads as bench_workloads
from train.bench.workloads import BenchOptions


def main() -> None:
    comm = MPI.COMM_WORLD
    workload, params = bench_workloads.parse(sys.argv[1])
    problem = workload.build(BenchOptions("", 0, params), comm)
    with jaxps.ParameterServer(problem.tables, technique="lockstep", peer_timeout=2.0) as ps:
        trainer = jaxps.SparseTrainer(ps, problem.loss_fn, problem.optimizers,
                                      max_keys=problem.max_keys)
        source = problem.batches(comm.rank, comm.size)
        for _ in range(2 if comm.rank == 0 else 1):
            trainer.train_epoch(itertools.islice(source, 3))
        print(f"rank {comm.rank} done", flush=True)


if __name__ == "__main__":
    jaxps.run_main(main)
