"""The lockstep technique (jaxps/_src/lockstep.py): classic's partition, each training
step's rows and deltas moved in collectives by the training thread.

On real ranks (``mpiexec``): it trains exactly what a serial bulk-synchronous replay
trains, also when the ranks' shards have different numbers of batches; ranks that call
``train_epoch`` a different number of times end the job with a message instead of hanging.
One process and the plain PS calls are classic's (tests/test_trainer.py, test_ps_local.py
and the mpi_suite run every technique, lockstep among them).
"""

from __future__ import annotations

import json
import time

import pytest

import jaxps
from train.kge import synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A workload spec on a tiny generated graph (300 entities), small shapes."""
    folder = tmp_path_factory.mktemp("lockstep") / "graph"
    synthetic.write_dataset(folder, synthetic.generate(300, 8, 6000, seed=3))
    return f"kge:data={folder},dim=16,batch_size=64,negatives=32"


def test_lockstep_is_a_technique_of_its_own():
    assert "lockstep" in jaxps.TECHNIQUES
    assert isinstance(jaxps.Lockstep(), jaxps.Classic)
    assert jaxps.Lockstep.name == "lockstep" and not jaxps.Lockstep.relocates


@pytest.mark.parametrize("ranks", [2, 3])
def test_lockstep_trains_what_a_serial_replay_trains(tiny, ranks):
    """Rank r trains 12 + r batches: every delta reaches its owner once (none lost, none
    doubled), each step reads the state after every rank's previous step, and the ranks
    with fewer batches serve the others' last steps."""
    from tests.conftest import mpirun

    res = mpirun(ranks, ["tests/mpi_programs/lockstep_ps_check.py", tiny, "12"], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["max_abs_change"] > 1e-3          # it trained
    assert out["max_abs_diff"] < 1e-5, out       # exactly what the replay trained
    assert [r["batches"] for r in out["ranks"]] == [12 + r for r in range(ranks)]
    for r in out["ranks"]:  # about 1/ranks of a batch's keys are the rank's own
        assert r["pull_local"] > 0 and r["pull_remote"] > r["pull_local"] * (ranks - 1) / 2


def test_ranks_that_train_a_different_number_of_epochs_end_the_job(tiny):
    from tests.conftest import mpirun

    t0 = time.perf_counter()
    res = mpirun(2, ["tests/mpi_programs/lockstep_mismatch.py", tiny], timeout=120)
    took = time.perf_counter() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "lockstep: rank 0 waited over 2 s" in out, out[-3000:]
    assert "every rank must call SparseTrainer.train_epoch as often as the others" in out
    assert "rank 0 done" not in out
    assert took < 60, took  # the 2 s timeout, start-up and the abort; not the 120 s limit


def test_the_emulated_network_delays_every_collective(tiny, monkeypatch):
    """JAXPS_NET_LATENCY_US applies to lockstep's collectives too (they bypass the PS's
    transport): 12 steps of 4 collectives at 20 ms each wait >= ~0.96 s per rank, and the
    result is still exactly the replay's."""
    from tests.conftest import mpirun

    monkeypatch.setenv("JAXPS_NET_LATENCY_US", "20000")
    res = mpirun(2, ["tests/mpi_programs/lockstep_ps_check.py", tiny, "12"], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["max_abs_diff"] < 1e-5, out
    # Rank 1 has a 13th batch: 13 steps of 4, then the all-done round's count exchange.
    assert min(r["wait"] for r in out["ranks"]) > 12 * 4 * 0.02 * 0.95, out["ranks"]
