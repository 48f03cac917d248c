"""The floor: what moving rows between two ranks costs in numpy + mpi4py with no protocol.

Usage:
    python -m train.bench.floor [--moved 350] [--width 256]
                                [--keys 30000] [--steps 3000] [--repeats 3] [--json FILE]

Run as a plain command it relaunches itself under ``mpiexec -n 2 -bind-to core`` (one
rank per core). Each rank owns half of a table of ``--keys`` rows of ``--width`` float32
(kge-zipf-small: 29,534 entities, ComplEx dim 64 with its AdaGrad state = 256 floats).
Per step and rank, with nothing but vectorized numpy and two blocking ``Sendrecv``:

1. *request*: ``--moved`` keys this rank lacks (drawn at random, kept if absent here)
   go to the peer as one int64 buffer;
2. *serve*: the peer's request is answered: its rows gathered straight into the reply
   buffer, the keys removed (directory entry and free list);
3. *reply*: the rows travel back as one float32 buffer;
4. *insert*: the received rows go into slots popped off the free list, the directory
   entries point at them.

That is the least any design that moves rows on demand must do: no intents, no decisions,
no acknowledgements, no owner updates, no sync rounds, no locks, no second thread. (The
step's own pull and push are not part of it: ``python -m train.bench.ps`` compares those
with numpy.)

Printed per step and rank: CPU microseconds of each phase (``time.thread_time``), of the
two ``Sendrecv`` calls (MPICH polls while it waits, so this is CPU too) and the whole
process (``time.process_time``), median and spread of ``--repeats`` runs; per moved row.
The figures bound from below what the PS (`jaxps`) can reach for the same traffic: see
docs/bench.md, "The floor".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PHASES = ("request", "serve", "insert", "sendrecv")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train.bench.floor",
        description="Floor cost of moving rows between 2 ranks in numpy + mpi4py, "
                    "without any PS protocol (relaunches itself under mpiexec -n 2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--moved", type=int, default=350,
                   help="rows each rank asks the other for per step (kge-zipf-small, "
                        "adaptive, 2 ranks: ~350 moved or copied per step and rank)")
    p.add_argument("--width", type=int, default=256, help="float32 per row")
    p.add_argument("--keys", type=int, default=30000, help="rows in the table")
    p.add_argument("--steps", type=int, default=3000, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--json", help="write the figures to this file (rank 0)")
    p.add_argument("--no-launch", action="store_true",
                   help="run in this process (under an mpiexec you started yourself)")
    args = p.parse_args(argv)
    if min(args.moved, args.width, args.steps, args.repeats) < 1:
        p.error("--moved, --width, --steps and --repeats must be >= 1")
    if args.keys < 4 * args.moved:
        p.error(f"--keys {args.keys} is too small: it needs at least 4 x --moved = "
                f"{4 * args.moved} rows")
    return args


class Half:
    """One rank's rows: a directory slot[key] (-1 absent), a row array, a free-slot stack."""

    def __init__(self, num_keys: int, width: int, rank: int):
        own = np.arange(rank, num_keys, 2, dtype=np.int64)
        self.values = np.random.default_rng(rank).standard_normal(
            (num_keys, width)).astype(np.float32)
        self.slot = np.full(num_keys, -1, np.int64)
        self.slot[own] = np.arange(len(own))
        self.free = np.empty(num_keys, np.int64)  # stack of free slots, top at n_free
        self.n_free = num_keys - len(own)
        self.free[:self.n_free] = np.arange(num_keys - 1, len(own) - 1, -1)

    def remove(self, keys: np.ndarray, out: np.ndarray) -> None:
        slots = self.slot[keys]
        np.take(self.values, slots, axis=0, out=out)
        self.slot[keys] = -1
        self.free[self.n_free:self.n_free + len(slots)] = slots
        self.n_free += len(slots)

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        n = len(keys)
        self.n_free -= n
        slots = self.free[self.n_free:self.n_free + n]
        self.values[slots] = rows
        self.slot[keys] = slots


def run(args, comm) -> dict | None:
    from mpi4py import MPI

    rank = comm.Get_rank()
    if comm.Get_size() != 2:
        raise SystemExit(f"train.bench.floor needs exactly 2 ranks, got {comm.Get_size()}")
    half = Half(args.keys, args.width, rank)
    rng = np.random.default_rng(100 + rank)
    k, w = args.moved, args.width
    req_recv = np.empty(k, np.int64)
    reply_send = np.empty((k, w), np.float32)
    reply_recv = np.empty((k, w), np.float32)
    status = MPI.Status()
    peer = 1 - rank

    def step(t: dict) -> None:
        c = time.thread_time_ns
        z = c()
        cand = np.unique(rng.integers(0, args.keys, max(4 * k, 64)))  # a batch's keys
        while np.count_nonzero(half.slot[cand] < 0) < k:  # too few absent: draw more
            cand = np.unique(np.concatenate([cand, rng.integers(0, args.keys, 4 * k)]))
        a = c()
        want = cand[half.slot[cand] < 0][:k]  # the absent ones
        b = c()
        comm.Sendrecv(want, peer, 1, req_recv, peer, 1, status)
        e = c()
        half.remove(req_recv, reply_send)
        f = c()
        comm.Sendrecv(reply_send, peer, 2, reply_recv, peer, 2)
        g = c()
        half.insert(want, reply_recv)
        h = c()
        t["request"] += b - a
        t["sendrecv"] += (e - b) + (g - f)
        t["serve"] += f - e
        t["insert"] += h - g
        t["untimed"] += a - z

    for _ in range(50):  # warm-up: caches, MPICH's first-use set-up
        step(dict.fromkeys(PHASES + ("untimed",), 0))
    repeats = []
    for _ in range(args.repeats):
        t = dict.fromkeys(PHASES + ("untimed",), 0)
        comm.Barrier()
        p0 = time.process_time_ns()
        for _ in range(args.steps):
            step(t)
        process = time.process_time_ns() - p0 - t.pop("untimed")
        comm.Barrier()
        us = {name: v / args.steps / 1e3 for name, v in t.items()}
        us["process"] = process / args.steps / 1e3
        repeats.append(us)
    # Every key must still live on exactly one rank: the moves lost or doubled nothing.
    owned = comm.gather(np.flatnonzero(half.slot >= 0), root=0)
    gathered = comm.gather(repeats, root=0)
    if rank != 0:
        return None
    both = np.concatenate(owned)
    conserved = bool(len(both) == args.keys and len(np.unique(both)) == args.keys)
    per = {name: sorted(r[name] for reps in gathered for r in reps)
           for name in PHASES + ("process",)}
    move = ("request", "serve", "insert", "sendrecv")
    out = {
        "args": {k2: v for k2, v in vars(args).items() if k2 not in ("json", "no_launch")},
        "keys_conserved": conserved,
        "us_per_step": {n: {"min": v[0], "median": float(np.median(v)), "max": v[-1]}
                        for n, v in per.items()},
    }
    moving = sum(out["us_per_step"][n]["median"] for n in move)
    out["move_us_per_step"] = moving
    out["move_us_per_row"] = moving / k
    return out


def report(out: dict) -> str:
    a = out["args"]
    lines = [f"floor: 2 ranks, {a['moved']} rows moved per step and rank, "
             f"{a['width']} float32 per row; {a['steps']} steps x "
             f"{a['repeats']} repeats; CPU us per step and rank (min / median / max over "
             f"ranks and repeats)",
             f"{'phase':<10} {'min':>8} {'median':>8} {'max':>8}"]
    for name, v in out["us_per_step"].items():
        lines.append(f"{name:<10} {v['min']:8.1f} {v['median']:8.1f} {v['max']:8.1f}")
    lines.append(f"every key on exactly one rank afterwards: {out['keys_conserved']}")
    lines.append(f"moving (request + serve + insert + sendrecv): {out['move_us_per_step']:.1f} "
                 f"us per step, {out['move_us_per_row']:.3f} us per moved row")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_launch:
        cmd = ["mpiexec", "-n", "2", "-bind-to", "core", sys.executable, "-m",
               "train.bench.floor", "--no-launch", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd, env=os.environ.copy()).returncode
    from mpi4py import MPI

    from train.common.outputs import write_json

    out = run(args, MPI.COMM_WORLD)
    if out is not None:
        print(report(out), flush=True)
        if args.json:
            write_json(Path(args.json), out)
    return 0


if __name__ == "__main__":
    import jaxps

    # A failure on one rank ends the whole job (its peer would wait in Sendrecv forever).
    sys.exit(jaxps.run_main(main))
