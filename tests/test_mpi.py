"""Multi-rank runs: the mpi_suite under mpiexec with 2-4 ranks, the abort path, idle CPU.

Each launch has a hard timeout, so a deadlock fails the test instead of hanging CI.
"""

import re
import time

import pytest

from tests.conftest import mpirun


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_suite_under_mpiexec(ranks):
    """The whole mpi_suite (every technique) under mpiexec -n ranks."""
    res = mpirun(ranks, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                         "tests/mpi_suite"], timeout=240)
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, f"mpiexec -n {ranks} pytest tests/mpi_suite failed:\n{tail}"
    assert "passed" in res.stdout and "failed" not in res.stdout, tail


def test_uncaught_error_on_one_rank_ends_the_job():
    """Rank 1 raises while rank 0 waits for it in a pull: the job ends within seconds,
    non-zero, with rank 1's error message shown."""
    res = mpirun(3, ["tests/mpi_programs/abort_one_rank.py"], timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "deliberate failure on rank 1" in out, out[-3000:]
    assert "finished normally" not in out


def test_error_outside_the_ps_block_ends_the_job():
    """An uncaught exception after the PS exists (excepthook) aborts all ranks too."""
    res = mpirun(2, ["tests/mpi_programs/abort_one_rank.py", "--outside"], timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "deliberate failure on rank 1" in out


def test_stopped_rank_ends_the_job_naming_it():
    """Rank 2 of 3 is stopped (SIGSTOP) mid-run: the watchdog ends the job within
    peer_timeout + 10 s, naming rank 2, instead of the others waiting forever."""
    timeout = 3.0
    t0 = time.monotonic()
    res = mpirun(3, ["tests/mpi_programs/stop_one_rank.py", str(timeout)], timeout=60)
    elapsed = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "rank 2 has sent nothing" in out, out[-3000:]
    assert "finished normally" not in out
    assert elapsed < timeout + 10 + 5, f"took {elapsed:.1f} s"  # + start-up of 3 ranks


def test_whole_job_stopped_and_continued_goes_on():
    """All ranks stopped at once for 2 x peer_timeout (Ctrl-Z of mpiexec, a host that
    slept), then continued: the watchdog does not take the common pause for dead peers."""
    res = mpirun(2, ["tests/mpi_programs/stop_whole_job.py", "2"], timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert out.count("finished normally") == 2, out[-3000:]
    assert "has sent nothing" not in out


def test_emulated_network_delays_every_round_trip(monkeypatch):
    """JAXPS_NET_LATENCY_US=20000: a remote pull takes at least two one-way latencies."""
    monkeypatch.setenv("JAXPS_NET_LATENCY_US", "20000")
    res = mpirun(2, ["tests/mpi_programs/net_latency.py"], timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    ms = [float(x) for x in re.findall(r"remote pull ([0-9.]+) ms", out)]
    assert len(ms) == 2 and min(ms) >= 40.0 and max(ms) < 400.0, ms


def test_idle_ps_uses_little_cpu():
    """An idle 2-rank PS: each rank's process uses < 5% of a core."""
    res = mpirun(2, ["tests/mpi_programs/idle_cpu.py", "3.0"], timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    shares = [float(x) for x in re.findall(r"idle cpu share ([0-9.]+)", out)]
    assert len(shares) == 2, out[-3000:]
    assert max(shares) < 0.05, f"idle CPU shares per rank: {shares}"
