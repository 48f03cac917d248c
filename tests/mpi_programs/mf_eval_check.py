"""Evaluates RMSE/MAE of seeded random MF parameters over COMM_WORLD; rank 0 prints JSON.

Run by tests/test_mf_mpi.py as ``mpiexec -n N python tests/mpi_programs/mf_eval_check.py``:
the parameters and ratings are the same whatever N, so the printed figures must be too.
"""

import json

import numpy as np
from mpi4py import MPI

import jaxps
from train.mf.data import Ratings
from train.mf.evaluate import evaluate

DIM, USERS, ITEMS, N = 7, 53, 31, 1001


def main() -> None:
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(5)
    rows = {"user": rng.normal(0, 0.7, (USERS, DIM + 2)).astype(np.float32),  # + 1 state col
            "item": rng.normal(0, 0.7, (ITEMS, DIM + 2)).astype(np.float32)}
    split = Ratings(rng.integers(0, USERS, N), rng.integers(0, ITEMS, N),
                    rng.integers(1, 6, N).astype(np.float32))
    tables = {t: jaxps.TableSpec(len(r), DIM + 1, state_dim=1) for t, r in rows.items()}
    with jaxps.ParameterServer(tables, technique="relocation", comm=comm) as ps:
        if comm.Get_rank() == 0:
            for t, r in rows.items():
                ps.set(t, np.arange(len(r)), r)
        ps.wait_sync()
        # Move some rows around so that pulls are served by different owners.
        ps.localize("item", np.arange(comm.Get_rank(), ITEMS, comm.Get_size() + 1))
        ps.barrier()
        result = evaluate(ps, split, mean=3.1, rating_range=(1.0, 5.0), width=DIM + 1,
                          comm=comm)
    if comm.Get_rank() == 0:
        print(json.dumps({k: repr(v) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
