"""The MF workload of the benchmark harness: the local baseline equals PS training on 1 rank."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from mpi4py import MPI

import jaxps
from train.bench import workloads as bench_workloads
from jaxps import DenseTrainer
from train.bench.workloads import BenchOptions


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.mark.parametrize("schedule", ["shuffled", "columns"])
def test_mf_workload_local_equals_ps(schedule):
    # data= (empty): the synthetic_* sizes, small here
    workload, params = bench_workloads.parse(
        f"mf-zipf-small:data=,synthetic_rows=500,synthetic_cols=100,synthetic_cells=5000,"
        f"dim=8,batch_size=128,schedule={schedule}")
    problem = workload.build(BenchOptions(params=params), MPI.COMM_WORLD)
    steps = 10
    local = DenseTrainer(problem.tables, problem.loss_fn, problem.optimizers)
    got = local.train(itertools.islice(problem.batches(0, 1), steps))
    with jaxps.ParameterServer(problem.tables, technique="adaptive") as ps:
        trainer = jaxps.SparseTrainer(ps, problem.loss_fn, problem.optimizers)
        m = trainer.train_epoch(itertools.islice(problem.batches(0, 1), steps))
        rows = {t: ps.pull(t, np.arange(s.num_keys)) for t, s in problem.tables.items()}
    assert m.batches == got.batches == steps and problem.info["schedule"] == schedule
    for t in problem.tables:
        np.testing.assert_allclose(local.rows(t), rows[t], rtol=1e-5, atol=1e-6, err_msg=t)


def test_dsgd_is_refused_with_the_reason():
    workload, params = bench_workloads.parse("mf-zipf-small:schedule=dsgd")
    with pytest.raises(ValueError, match="dsgd needs the sub-epoch barriers"):
        workload.build(BenchOptions(params=params), MPI.COMM_WORLD)
