"""MF under mpiexec (hard timeouts): evaluation independent of the rank count, schedule locality."""

from __future__ import annotations

import json

import pytest

from tests.conftest import mpirun

TINY = ["-m", "train.mf", "--data", "synthetic:rows=3000,cols=800,cells=40000", "--dim", "16",
        "--epochs", "2", "--batch-size", "512", "--eval-every", "0", "--no-progress"]


def _eval(ranks: int) -> dict:
    res = mpirun(ranks, ["tests/mpi_programs/mf_eval_check.py"], timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_rmse_identical_on_1_and_n_ranks():
    one = _eval(1)
    assert float(one["rmse"]) > 0.5 and one["num_ratings"] == "1001"
    assert _eval(3) == one


@pytest.mark.parametrize("schedule, technique, lookahead, least", [
    ("dsgd", "relocation", 0, 0.99),    # blocking: localize per sub-epoch, no intents
    ("columns", "adaptive", 1, 0.97),   # latency hiding: intents one batch ahead
])
def test_schedule_locality_on_2_ranks(tmp_path, schedule, technique, lookahead, least):
    out = tmp_path / "out"
    res = mpirun(2, [*TINY, "--schedule", schedule, "--technique", technique,
                     "--lookahead", str(lookahead), "--out", str(out)], timeout=180)
    log = (res.stdout + res.stderr)[-3000:]
    assert res.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["test"]["rmse"] < 1.3, summary["test"]
    assert summary["ps"]["local_fraction"] >= least, (summary["ps"], log)
    assert summary["ps"]["relocations"] > 0
