"""PS micro-benchmark: local pull/push overhead vs raw numpy, remote pull throughput.

Usage:
    python -m train.bench.ps [--keys 100000] [--dim 128] [--batch 10000] [--repeats 30]

Run as a plain command it measures the local path in this process, then relaunches
itself under ``mpiexec -n 2`` for the remote part (rank 1 pulls rows that live on
rank 0). Prints a table and, with --json FILE, writes the figures.
Ratios are raw_time / ps_time, so 1.0 means "as fast as numpy fancy indexing".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_numpy(args) -> dict:
    from mpi4py import MPI

    import jaxps

    rng = np.random.default_rng(0)
    n, d, b = args.keys, args.dim, args.batch
    spec = jaxps.TableSpec(n, d)
    keys = rng.integers(0, n, b)
    ukeys = rng.choice(n, b, replace=False)
    deltas = rng.standard_normal((b, d)).astype(np.float32)
    raw = rng.standard_normal((n, d)).astype(np.float32)
    out = {}
    with jaxps.ParameterServer({"e": spec}, technique="relocation", comm=MPI.COMM_SELF) as ps:
        t_raw = median_seconds(lambda: raw[keys], args.repeats)
        t_ps = median_seconds(lambda: ps.pull("e", keys), args.repeats)
        out["local_pull"] = dict(raw_ms=t_raw * 1e3, ps_ms=t_ps * 1e3, ratio=t_raw / t_ps)

        def raw_push():
            raw[ukeys] += deltas

        t_raw = median_seconds(raw_push, args.repeats)
        t_ps = median_seconds(lambda: ps.push("e", ukeys, deltas), args.repeats)
        out["local_push_unique"] = dict(raw_ms=t_raw * 1e3, ps_ms=t_ps * 1e3, ratio=t_raw / t_ps)

        def raw_push_dup():
            np.add.at(raw, keys, deltas)

        t_raw = median_seconds(raw_push_dup, max(3, args.repeats // 5))
        t_ps = median_seconds(lambda: ps.push("e", keys, deltas), max(3, args.repeats // 5))
        out["local_push_duplicates_vs_add_at"] = dict(raw_ms=t_raw * 1e3, ps_ms=t_ps * 1e3,
                                                      ratio=t_raw / t_ps)
    return out


def bench_remote(args) -> dict | None:
    """Under mpiexec -n 2: rank 1 pulls/pushes rows owned by rank 0 (classic placement)."""
    from mpi4py import MPI

    import jaxps

    comm = MPI.COMM_WORLD
    n, d, b = args.keys, args.dim, args.batch
    with jaxps.ParameterServer({"e": jaxps.TableSpec(n, d)}, technique="classic") as ps:
        keys = np.arange(0, n, 2)[:b]  # home rank 0
        mb = b * d * 4 / 1e6
        result = None
        ps.barrier()
        if comm.rank == 1:
            t_pull = median_seconds(lambda: ps.pull("e", keys), args.repeats)
            deltas = np.zeros((len(keys), d), np.float32)
            t_push = median_seconds(lambda: ps.push("e", keys, deltas), args.repeats)

            def pipelined():
                hs = [ps.pull_async("e", keys) for _ in range(4)]
                for h in hs:
                    ps.wait(h)

            t_pipe = median_seconds(pipelined, max(3, args.repeats // 4)) / 4
            result = dict(rows=len(keys), dim=d, pull_ms=t_pull * 1e3, pull_mb_s=mb / t_pull,
                          push_ms=t_push * 1e3, push_mb_s=mb / t_push,
                          pipelined_pull_mb_s=mb / t_pipe)
        ps.barrier()
    return comm.bcast(result, root=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000, help="table size (keys)")
    p.add_argument("--dim", type=int, default=128, help="row width")
    p.add_argument("--batch", type=int, default=10_000, help="keys per pull/push")
    p.add_argument("--repeats", type=int, default=30, help="timed repetitions (median)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--remote-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.remote_only:
        remote = bench_remote(args)
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            print(json.dumps(remote))
        return

    local = bench_numpy(args)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", "2", sys.executable, "-m", "train.bench.ps", "--remote-only",
           f"--keys={args.keys}", f"--dim={args.dim}", f"--batch={args.batch}",
           f"--repeats={args.repeats}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    if res.returncode != 0:
        sys.exit(f"remote benchmark failed:\n{res.stderr[-3000:]}")
    remote = json.loads(res.stdout.strip().splitlines()[-1])

    print(f"PS micro-benchmark: table {args.keys} x {args.dim} float32, {args.batch} keys per call")
    print(f"{'operation':34s} {'numpy ms':>9s} {'PS ms':>8s} {'ratio':>6s}")
    for name, r in local.items():
        print(f"{name:34s} {r['raw_ms']:9.3f} {r['ps_ms']:8.3f} {r['ratio']:6.2f}")
    print(f"remote pull  (2 ranks, {remote['rows']} x {remote['dim']}): "
          f"{remote['pull_ms']:.2f} ms = {remote['pull_mb_s']:.0f} MB/s; "
          f"4 in flight: {remote['pipelined_pull_mb_s']:.0f} MB/s")
    print(f"remote push  (2 ranks, {remote['rows']} x {remote['dim']}): "
          f"{remote['push_ms']:.2f} ms = {remote['push_mb_s']:.0f} MB/s")
    if args.json:
        args.json.write_text(json.dumps({"local": local, "remote": remote}, indent=2))


if __name__ == "__main__":
    import jaxps
    jaxps.run_main(main)  # under mpiexec: a failure on any rank ends the whole job
