"""Tests in this folder run in one process (world of size 1) and under
``mpiexec -n N python -m pytest tests/mpi_suite`` (launched by tests/test_mpi.py).

Every rank runs the same tests in the same order; assertions are made collective
(``assert_all``) so that all ranks fail together instead of leaving peers waiting.
"""

import numpy as np
import pytest
from mpi4py import MPI

import jaxps

COMM = MPI.COMM_WORLD
MULTI = list(jaxps.TECHNIQUES)  # every correctness test runs once per technique


def assert_all(ok: bool, msg: str) -> None:
    """Assert on every rank that ``ok`` held on every rank; names the failing ranks."""
    oks = COMM.allgather(bool(ok))
    msgs = COMM.allgather(msg if not ok else "")
    bad = [f"rank {r}: {m}" for r, (o, m) in enumerate(zip(oks, msgs)) if not o]
    assert not bad, "; ".join(bad)


@pytest.fixture(params=MULTI)
def technique(request):
    return request.param


def make_ps(technique, **tables):
    """A PS for the test; "nups" gets a hot set of every 7th key (spread over homes)."""
    if technique == "nups":
        technique = jaxps.Nups(hot_keys={name: np.arange(0, spec.num_keys, 7)
                                         for name, spec in tables.items()})
    return jaxps.ParameterServer(tables, technique=technique)


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, COMM.rank])
