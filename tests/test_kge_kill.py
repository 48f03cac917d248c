"""A rank of a 3-rank `python -m train.kge` job killed or stopped mid-training: the job ends
in time and its output names that rank (issue 13; docs/reliability.md, "A rank killed
outright"). Each job runs under mpiexec with a hard timeout."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from conftest import MPIEXEC, REPO, mpi_env

GRAPH = ["--synthetic-entities", "300", "--synthetic-relations", "8",
         "--synthetic-triples", "6000", "--dim", "16", "--batch-size", "128",
         "--negatives", "64", "--epochs", "100000", "--eval-every", "0", "--no-progress"]


def _start(tmp_path, extra: list[str]) -> tuple[subprocess.Popen, dict[int, int]]:
    """Start the job and return once rank 0 printed epoch 2, with the rank -> pid table."""
    env = mpi_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    proc = subprocess.Popen([str(MPIEXEC), "-n", "3", sys.executable, "-m", "train.kge", *GRAPH,
                             *extra], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: dict[int, int] = {}
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # the job trains "forever": it must be killed below
        seen.append(line)
        if m := re.search(r"3 ranks: (.*)", line):
            pids = {int(r): int(p) for r, p in re.findall(r"rank (\d) = pid (\d+)@", m[1])}
        if line.startswith("epoch   2/") or time.monotonic() > deadline:
            break
    if len(pids) != 3 or not seen[-1].startswith("epoch   2/"):
        proc.kill()
        pytest.fail("no pid table or no epoch 2 within 120 s:\n" + "".join(seen)[-3000:])
    return proc, pids


def _finish(proc: subprocess.Popen, limit: float) -> tuple[str, float]:
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=limit + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the job was still running {limit + 20:.0f} s later:\n{out[-3000:]}")
    return out, time.monotonic() - t0


def test_sigkill_of_rank_1_ends_the_job_naming_it(tmp_path):
    proc, pids = _start(tmp_path, [])
    subprocess.run(["kill", "-KILL", str(pids[1])], check=True)
    out, elapsed = _finish(proc, 30)
    assert proc.returncode != 0, out[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert re.search(rf"\[jaxps\] rank 1 \(pid {pids[1]}@\S+\) died without a message",
                     out), out[-3000:]


def test_sigstop_of_rank_2_ends_the_job_within_peer_timeout(tmp_path):
    proc, pids = _start(tmp_path, ["--peer-timeout", "5"])
    t0 = time.monotonic()
    subprocess.run(["kill", "-STOP", str(pids[2])], check=True)
    try:
        out, _ = _finish(proc, 15)
    finally:
        subprocess.run(["kill", "-CONT", str(pids[2])], check=False, capture_output=True)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, out[-3000:]
    assert elapsed < 5 + 10, f"took {elapsed:.1f} s"
    assert "rank 2 has sent nothing for" in out, out[-3000:]
    # The sentinels take the watchdog's abort for what it is, not for a death to report.
    assert "died without a message" not in out, out[-3000:]


def test_a_normal_end_reports_no_death(tmp_path):
    """The ranks end at different times on purpose (bye): no sentinel reports them."""
    env = mpi_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    args = [a if a != "100000" else "2" for a in GRAPH]
    res = subprocess.run([str(MPIEXEC), "-n", "3", sys.executable, "-m", "train.kge", *args],
                         cwd=REPO, env=env, text=True, capture_output=True, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "2 epochs in" in out and "died" not in out, out[-3000:]


def test_an_error_on_one_rank_reports_no_death(tmp_path):
    """A rank that aborts after printing its error says so first: the others, killed by the
    launcher, are not reported as deaths."""
    env = mpi_env()
    res = subprocess.run([str(MPIEXEC), "-n", "3", sys.executable, "-m", "train.kge", *GRAPH,
                          "--out", str(REPO / "README.md")], cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "is an existing file" in out, out[-3000:]
    assert "died without a message" not in out, out[-3000:]

