"""Kill one rank mid-training, resume, and compare test MRR with uninterrupted runs.

The protocol of docs/reliability.md ("Resume after a kill"): ``--runs`` uninterrupted runs of
the same command and seed measure the run-to-run spread (several asynchronous ranks are not
deterministic, so one multi-rank run differs from the next); then ``--runs`` times: start
the same command with ``--checkpoint-every 1``, SIGKILL rank ``--victim`` once rank 0 printed
epoch ``--kill-after``, check that the job ended within 30 s, run it again with
``--resume``, and read its test MRR. Each figure is printed, then the mean of both groups,
the spread of the uninterrupted runs and each resumed run's distance to their mean.

    python -m train.resume_check --ranks 3 --runs 4 -- --data umls --dim 64 --epochs 12

Arguments after ``--`` go to ``python -m train.kge`` (``--out``, ``--seed`` default 1,
``--checkpoint-every`` and ``--no-progress`` are added). Every job runs under a hard timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                   "intra_op_parallelism_threads=1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _command(ranks: int, kge_args: list[str], out: Path) -> list[str]:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    return [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "train.kge", *kge_args,
            "--out", str(out), "--checkpoint-every", "1", "--no-progress"]


def _test_mrr(out: Path) -> float:
    return float(json.loads((out / "summary.json").read_text())["test"]["mrr"])


def uninterrupted(ranks: int, kge_args: list[str], out: Path, timeout: float) -> float:
    res = subprocess.run(_command(ranks, kge_args, out), cwd=REPO, env=_env(), timeout=timeout,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"uninterrupted run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return _test_mrr(out)


def killed_and_resumed(ranks: int, kge_args: list[str], out: Path, *, victim: int,
                       kill_after: int, timeout: float) -> tuple[float, float, str]:
    """(test MRR of the resumed run, seconds from the kill to the job's end, the job's
    line naming the dead rank)."""
    proc = subprocess.Popen(_command(ranks, kge_args, out), cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if m := re.search(r"\d+ ranks: (.*)", line):
            pids = {int(r): int(p) for r, p in re.findall(r"rank (\d+) = pid (\d+)@", m[1])}
        if re.match(rf"epoch\s+{kill_after}/", line) or time.monotonic() > deadline:
            break
    if victim not in pids:
        proc.kill()
        raise RuntimeError("no pid table or no epoch line from rank 0")
    os.kill(pids[victim], signal.SIGKILL)
    t0 = time.monotonic()
    try:
        rest, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError("the job did not end within 30 s of the kill") from None
    ended = time.monotonic() - t0
    named = next((ln for ln in rest.splitlines() if f"rank {victim} (pid" in ln), "")
    res = subprocess.run(_command(ranks, kge_args, out) + ["--resume"], cwd=REPO, env=_env(),
                         timeout=timeout, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"resumed run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return _test_mrr(out), ended, named


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, kge_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    p = argparse.ArgumentParser(prog="python -m train.resume_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=3, help="mpiexec -n (default: 3)")
    p.add_argument("--runs", type=int, default=3, help="uninterrupted runs (default: 3)")
    p.add_argument("--kill-runs", type=int, default=None,
                   help="killed and resumed runs (default: as many as --runs)")
    p.add_argument("--victim", type=int, default=1, help="rank to SIGKILL (default: 1)")
    p.add_argument("--kill-after", type=int, default=5,
                   help="kill once rank 0 printed this epoch (default: 5)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per job (default: 600)")
    args = p.parse_args(ours)
    if "--seed" not in kge_args:
        kge_args += ["--seed", "1"]
    with tempfile.TemporaryDirectory(prefix="resume_check-") as tmp:
        base = [uninterrupted(args.ranks, kge_args, Path(tmp) / f"u{i}", args.timeout)
                for i in range(args.runs)]
        print("uninterrupted test MRR: " + " ".join(f"{m:.4f}" for m in base), flush=True)
        resumed = []
        for i in range(args.runs if args.kill_runs is None else args.kill_runs):
            mrr, ended, named = killed_and_resumed(
                args.ranks, kge_args, Path(tmp) / f"k{i}", victim=args.victim,
                kill_after=args.kill_after, timeout=args.timeout)
            resumed.append(mrr)
            print(f"killed rank {args.victim} after epoch {args.kill_after}: job ended "
                  f"{ended:.2f} s later ({named.strip() or 'the dead rank was not named'}); "
                  f"resumed: test MRR {mrr:.4f}", flush=True)
    mean = statistics.fmean(base)
    print(f"uninterrupted: mean {mean:.4f}, spread (max - min) {max(base) - min(base):.4f}"
          + (f"; resumed: mean {statistics.fmean(resumed):.4f}; |resumed - uninterrupted "
             "mean|: " + " ".join(f"{abs(m - mean):.4f}" for m in resumed) if resumed else ""))


if __name__ == "__main__":
    main()
