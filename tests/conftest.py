"""Shared test helpers: launching programs under mpiexec with a hard timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def mpi_env() -> dict:
    """Environment for child ranks: one thread each, since several ranks share 2 cores."""
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def mpirun(n: int, args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python args...`` on n ranks; a hang past ``timeout`` seconds fails the test."""
    if not MPIEXEC.exists():
        pytest.fail(f"{MPIEXEC} not found: install the project with ./dev.sh setup (mpich wheel)")
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, *args]
    try:
        return subprocess.run(cmd, cwd=REPO, env=mpi_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} hung for {timeout}s (deadlock?)\n"
                    f"--- stdout ---\n{out[-5000:]}\n--- stderr ---\n{err[-5000:]}")


def sigint_after_first_epoch(cmd: list[str], out, env: dict, *, pause: float):
    """Run ``cmd`` until its first epoch is on record (``out/metrics.jsonl``), wait
    ``pause`` seconds (into the next epoch), send SIGINT; returns (status, output)."""
    import signal
    import time
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(pause)
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, text


def assert_usage_error(parse_args, args: list[str], message: str, capsys) -> None:
    """``parse_args(args)`` exits 2 with argparse's usage and ``message`` on stderr."""
    with pytest.raises(SystemExit) as e:
        parse_args(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err, err
