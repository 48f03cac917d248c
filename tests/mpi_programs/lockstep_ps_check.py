"""The lockstep technique (jaxps/_src/lockstep.py) trains what a serial replay trains.

Run by tests/test_lockstep.py as ``mpiexec -n N python tests/mpi_programs/lockstep_ps_check.py
WORKLOAD STEPS``: rank r trains STEPS + r batches of its shard in one
``SparseTrainer.train_epoch`` (uneven on purpose: the ranks that run out take part in the
others' remaining steps), then rank 0 pulls every row through the PS and replays the same
steps in one process (each step: every rank that still has a batch reads its rows from the
same state, then every such rank's deltas are added) and prints, as JSON, the largest
difference of any table entry, how much training changed the tables, and the trainer's
batch and pull counts.
"""

import itertools
import json
import sys

import numpy as np
from mpi4py import MPI

import jaxps
from train.bench import workloads as bench_workloads
from train.bench.workloads import BenchOptions
from bsp_replay import replay  # beside this script (sys.path[0])


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    workload, params = bench_workloads.parse(sys.argv[1])
    steps = int(sys.argv[2])
    problem = workload.build(BenchOptions("", 0, params), comm)
    with jaxps.ParameterServer(problem.tables, technique="lockstep") as ps:
        trainer = jaxps.SparseTrainer(ps, problem.loss_fn, problem.optimizers,
                                      max_keys=problem.max_keys)
        m = trainer.train_epoch(itertools.islice(problem.batches(rank, size), steps + rank))
        sizes = dict(trainer._floor)
        ps.barrier()
        got = {t: ps.pull(t, np.arange(s.num_keys)) for t, s in problem.tables.items()}
        ps.barrier()
    counts = comm.gather({"batches": m.batches, "pull_local": m.ps["pull_local"],
                          "pull_remote": m.ps["pull_remote"],
                          "wait": m.ps["wait_pull_seconds"] + m.ps["wait_push_seconds"]},
                         root=0)
    if rank != 0:
        return
    state = replay(problem, [itertools.islice(problem.batches(r, size), steps + r)
                             for r in range(size)], sizes)
    worst = max(float(np.max(np.abs(got[t] - state[t]))) for t in state)
    moved = max(float(np.max(np.abs(got[t] - jaxps.initial_table(problem.tables[t], t))))
                for t in state)
    print(json.dumps({"max_abs_diff": worst, "max_abs_change": moved, "ranks": counts}),
          flush=True)


if __name__ == "__main__":
    jaxps.run_main(main)
