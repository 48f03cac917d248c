"""``--data NAME --download`` on several ranks; used by tests/test_kge_datasets.py.

    mpiexec -n 2 python tests/mpi_programs/fetch_on_ranks.py URL HOME [--per-rank]

Registers "tiny" at URL and resolves it with `resolve_on_ranks(download=True)`. HOME is the
data home ($JAXPS_DATA) of every rank, or with --per-rank HOME/rank<r> (as ranks on hosts
that do not share a cache folder). Each rank prints ``rank R: FOLDER``; a failure on any rank
ends the job (jaxps.run_main) with its message.
"""

import os
import sys

from mpi4py import MPI

import jaxps
from train.kge import datasets


def main() -> None:
    url, home = sys.argv[1], sys.argv[2]
    rank = MPI.COMM_WORLD.Get_rank()
    os.environ["JAXPS_DATA"] = f"{home}/rank{rank}" if "--per-rank" in sys.argv else home
    datasets.REGISTRY["tiny"] = datasets.DatasetInfo("Tiny", (url,), 60, 3, (0, 0, 0))
    folder = datasets.resolve_on_ranks("tiny", download=True, comm=MPI.COMM_WORLD)
    print(f"rank {rank}: {folder}", flush=True)


if __name__ == "__main__":
    jaxps.run_main(main)
