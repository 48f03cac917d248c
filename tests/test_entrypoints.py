"""Every `python -m` module under train/ answers --help with its options and exits 0."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, mpi_env

MODULES = ["train.kge", "train.mf", "train.bench", "train.bench.ps", "train.bench.floor", "train.bench.calls", "train.bench.lockstep", "train.demo",
           "train.whatif", "train.whatif.check", "train.resume_check", "train.compare_pbg",
           "train.mf.compare_surprise", "train.plot", "train.trace",
           "train.bench.workloads", "train.kge.datasets", "train.kge.predict", "train.kge.plot"]
MODULES += ["train.kge.search"]


@pytest.mark.parametrize("module", MODULES)
def test_help(module):
    res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=mpi_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout and len(res.stdout.splitlines()) >= 3, res.stdout


def test_every_entrypoint_is_listed():
    """A new `python -m` module (a __main__ guard or __main__.py under train/) joins MODULES."""
    found = set()
    for path in (REPO / "train").rglob("*.py"):
        if '__name__ == "__main__"' in path.read_text(encoding="utf-8"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    assert found <= set(MODULES), sorted(found - set(MODULES))
