"""Tests in this folder run in one process (world of size 1) and under
``mpiexec -n N python -m pytest tests/mpi_suite`` (launched by tests/test_mpi.py).

Every rank runs the same tests in the same order; assertions are made collective
(``assert_all``) so that all ranks fail together instead of leaving peers waiting.
"""

import numpy as np
import pytest
from mpi4py import MPI

import jaxps

from tests.conftest import REPO

COMM = MPI.COMM_WORLD
# Every correctness test runs once per technique, and once with the example technique
# of docs/techniques.md ("custom"), written against jaxps.Technique and PolicyView alone.
MULTI = [*jaxps.TECHNIQUES, "custom"]


def doc_technique() -> type:
    """The technique class defined by the first Python block of docs/techniques.md."""
    text = (REPO / "docs" / "techniques.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "docs/techniques.md", "exec"), namespace)
    found = [v for v in namespace.values() if isinstance(v, type)
             and issubclass(v, jaxps.Technique) and v is not jaxps.Technique]
    assert len(found) == 1, f"docs/techniques.md defines {len(found)} techniques"
    return found[0]


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
    elif technique == "custom":
        technique = doc_technique()(hot_after=2, drop_every=3)
    return jaxps.ParameterServer(tables, technique=technique)


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, COMM.rank])
