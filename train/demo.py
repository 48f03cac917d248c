"""PS demo and technique benchmark: a skewed access trace replayed on every rank,
once per technique.

It trains no model: the "step" is a sleep and the data a generated trace, so that the
techniques' communication can be compared in isolation (README "Performance"; the main job,
KGE training, is `python -m train.kge`, `./dev.sh run`).

Usage:
    mpiexec -n 2 python -m train.demo [--clocks 200] [--keys 100000] [--dim 64]
    mpiexec -n 4 python -m train.demo --techniques all     # the issue-3 benchmark
    mpiexec -n 2 python -m train.demo --record-trace runs/demo   # then: python -m
        train.whatif runs/demo --ranks 8,16,64   (what the techniques would do on a cluster)

Each rank walks through ``--clocks`` batches. A batch touches a few keys of a shared
Zipf-skewed set plus a rank-private block; the rank declares its intent for batch t+1
before working on batch t, pulls the rows, "computes" for ``--step-ms`` (a GIL-free
sleep standing in for a jitted step), and pushes a delta of 1 per key occurrence. At
the end the demo checks that no update was lost (every row equals the number of pushes
to it) and prints, per technique, the share of keys served locally and the share of
wall time blocked in PS calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

import jaxps


def batches(rank: int, size: int, args, rng: np.random.Generator):
    """Per clock: keys of one batch (int64, duplicates allowed)."""
    private_lo = args.keys // 2 + rank * (args.keys // 2 // size)
    private_n = args.keys // 2 // size
    for _ in range(args.clocks):
        shared = np.minimum(rng.zipf(1.1, args.batch // 2) - 1, args.keys // 2 - 1)
        block = private_lo + rng.integers(0, private_n, args.batch // 2)
        yield np.concatenate([shared, block])


def record(trace: list[np.ndarray], args, rank: int) -> None:
    """Write this rank's access trace for train.whatif (the same for every technique)."""
    from train.trace import TraceRecorder

    with TraceRecorder(args.record_trace, rank, tables={"emb": (args.keys, 4 * args.dim)}) as rec:
        for clock, keys in enumerate(trace):
            rec.record(clock, "emb", keys)


def run(technique: str, args, comm) -> dict:
    rank, size = comm.rank, comm.size
    spec = jaxps.TableSpec(args.keys, args.dim, init="zeros")
    trace = list(batches(rank, size, args, np.random.default_rng([args.seed, rank])))
    if args.record_trace:
        record(trace, args, rank)
    counts = np.zeros(args.keys, np.int64)
    for keys in trace:
        np.add.at(counts, keys, 1)
    total = comm.allreduce(counts)
    if technique == "nups":  # NuPS needs its hot set: the most accessed keys of the trace
        technique = jaxps.Nups(access_counts={"emb": total}, hot_fraction=args.hot_fraction)
    with jaxps.ParameterServer({"emb": spec}, technique=technique, comm=comm) as ps:
        ps.barrier()
        t0 = time.perf_counter()
        for t, keys in enumerate(trace):
            if t + 1 < len(trace):
                ps.intent("emb", trace[t + 1], ps.clock + 1)
            ps.pull("emb", np.unique(keys))
            time.sleep(args.step_ms / 1e3)
            ps.push_async("emb", keys, np.ones((len(keys), args.dim), np.float32))
            ps.advance_clock()
        wall = time.perf_counter() - t0
        stats = ps.stats()
        ps.wait_sync()
        mine = np.arange(rank, args.keys, size)
        lost = int(np.count_nonzero(ps.pull("emb", mine)[:, 0] != total[mine]))
    per_rank = comm.gather(dict(
        local=stats["local_fraction"], blocked=stats["wait_seconds"] / wall,
        mb_per_clock=stats["bytes_sent"] / 1e6 / args.clocks,
        relocations_per_clock=stats["relocations"] / args.clocks,
        replicas_per_clock=stats["replicas_created"] / args.clocks,
        replicas_held=stats["replicas"], wall=wall))
    lost = comm.allreduce(lost)
    if rank != 0:
        return {}
    mean = {k: float(np.mean([r[k] for r in per_rank])) for k in per_rank[0]}
    return dict(mean, local=min(r["local"] for r in per_rank), lost=lost)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Replay a skewed access trace on each technique.")
    p.add_argument("--clocks", type=int, default=200, help="batches per rank")
    p.add_argument("--keys", type=int, default=100_000, help="table size")
    p.add_argument("--dim", type=int, default=64, help="row width")
    p.add_argument("--batch", type=int, default=512, help="key accesses per batch")
    p.add_argument("--step-ms", type=float, default=10.0, help="simulated compute per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hot-fraction", type=float, default=0.01,
                   help="nups: share of keys (the most accessed) replicated everywhere")
    p.add_argument("--record-trace", metavar="PREFIX", default="",
                   help="also write the access trace (PREFIX.rankR.npz) for train.whatif")
    # Not lockstep: it changes only how SparseTrainer moves rows; the demo's own PS calls
    # would measure classic a second time.
    every = [t for t in jaxps.TECHNIQUES if t != "lockstep"]
    p.add_argument("--techniques", default="classic,relocation,adaptive",
                   help="comma-separated, or 'all' for " + ",".join(every))
    args = p.parse_args(argv)
    names = every if args.techniques == "all" else args.techniques.split(",")
    comm = MPI.COMM_WORLD
    rows = [(t, run(t, args, comm)) for t in names]
    if comm.rank == 0:
        print(f"{comm.size} ranks, {args.clocks} clocks, {args.batch} keys/batch, "
              f"{args.step_ms:g} ms step; means over ranks (local: the lowest rank)")
        print(f"{'technique':12s} {'local':>7s} {'blocked':>8s} {'MB/clock':>9s} "
              f"{'reloc/clock':>11s} {'repl/clock':>10s} {'held':>7s} {'lost':>5s} {'wall s':>7s}")
        for name, r in rows:
            print(f"{name:12s} {r['local']:7.2%} {r['blocked']:8.1%} {r['mb_per_clock']:9.3f} "
                  f"{r['relocations_per_clock']:11.1f} {r['replicas_per_clock']:10.1f} "
                  f"{r['replicas_held']:7.0f} {r['lost']:5d} {r['wall']:7.2f}")
        if any(r["lost"] for _, r in rows):
            raise SystemExit("lost updates detected")


if __name__ == "__main__":
    jaxps.run_main(main)  # an error on any rank ends the whole job
