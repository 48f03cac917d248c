"""Every `python -m` module under train/ answers --help with its options and exits 0."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, mpi_env

MODULES = ["train.kge", "train.mf", "train.bench", "train.bench_ps", "train.demo",
           "train.whatif", "train.whatif_check", "train.compare_pbg",
           "train.mf.compare_surprise", "train.plot", "train.trace", "train.bench_local",
           "train.bench_workloads", "train.kge.datasets"]
MODULES += ["train.kge.search"]


@pytest.mark.parametrize("module", MODULES)
def test_help(module):
    res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=mpi_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout and len(res.stdout.splitlines()) >= 3, res.stdout
