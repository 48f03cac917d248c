"""The README's Python samples run as written (each in a fresh process, one rank)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, mpi_env

SAMPLES = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_has_samples():
    assert len(SAMPLES) >= 2


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_readme_sample_runs(index):
    res = subprocess.run([sys.executable, "-c", SAMPLES[index]], cwd=REPO, env=mpi_env(),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, f"README sample {index + 1} failed:\n{res.stderr[-3000:]}"
