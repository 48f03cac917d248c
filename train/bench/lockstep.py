"""The ceiling of a lockstep exchange: a benchmark workload trained with each step's remote
rows moved by the training thread in bulk collectives, with no PS thread and no protocol.

Usage:
    python -m train.bench.lockstep [--workload kge-zipf-small] [--data-root DIR]
                                   [--ranks 1,2] [--steps 2000] [--warmup 50] [--repeats 3]
                                   [--json FILE]

Run as a plain command it runs one ``mpiexec -n N -bind-to core`` job per rank count and
repeat (1 rank on core 0 alone, as ``train.bench``). Each rank holds the rows of the keys
``k % N == rank`` (classic's static partition: nothing moves). Per step and table, on the
training thread:

1. the batch's keys are grouped by owner; one ``Alltoall`` of counts and one ``Alltoallv``
   of keys (every table in the same ones) tell each owner what is asked of it;
2. the owners gather those rows straight into one ``Alltoallv`` back; own rows are gathered
   locally, all into the step's padded buffer in the batch's key order;
3. the jitted step (``jaxps.loss_and_row_deltas``, the same math as ``SparseTrainer``)
   computes the whole-row deltas;
4. own deltas are added in place; the others go to their owners in one ``Alltoallv``,
   which add them.

So every step waits for every peer twice (bulk-synchronous, the cost ``train.bench``'s PS
avoids), and a pull sees the other ranks' pushes of the step before (the staleness of a
classic PS whose pushes arrive a step late). That is what a PS could cost if all of its
traffic went in one exchange per clock made by the training thread: a measured ceiling for
that design (docs/bench.md, "The floor"), not a technique of jaxps. Reported per job:
examples/s (all ranks' timed examples / the slowest rank's seconds), examples per CPU-second
(``time.process_time`` of every rank), the mean loss of the last 10 steps; the median job
of ``--repeats`` and the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train.bench.lockstep",
        description="Ceiling of a lockstep exchange: a train.bench workload with each step's "
                    "remote rows moved in bulk collectives by the training thread.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workload", default="kge-zipf-small",
                   help="a train.bench workload (python -m train.bench --list)")
    p.add_argument("--data-root", default="",
                   help="folder of the real datasets (for --workload fb15k-237)")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    p.add_argument("--steps", type=int, default=2000, help="timed steps per rank")
    p.add_argument("--warmup", type=int, default=20,
                   help="untimed steps first (the compile), as train.bench's warm-up")
    p.add_argument("--repeats", type=int, default=3, help="identical jobs per rank count")
    p.add_argument("--timeout", type=float, default=900, help="seconds per job")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one job, under mpiexec
    args = p.parse_args(argv)
    try:
        args.rank_counts = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        p.error(f"--ranks must be comma-separated integers, got {args.ranks!r}")
    if min(args.rank_counts) < 1 or min(args.steps, args.repeats) < 1 or args.warmup < 0:
        p.error("--ranks, --steps and --repeats must be >= 1, --warmup >= 0")
    return args


class Partition:
    """One table's rows on this rank: key k lives on rank k % size at row k // size."""

    def __init__(self, spec, name: str, rank: int, size: int):
        from jaxps import initial_rows

        self.width = spec.width
        self.values = initial_rows(spec, name, np.arange(rank, spec.num_keys, size,
                                                         dtype=np.int64))


def exchange_step(comm, parts: dict, step, batch, sizes: dict) -> float:
    """Pull, step, push for one batch, all of it in collectives on this thread; the loss.

    Every table travels in the same collectives: one ``Alltoall`` of counts, then an
    ``Alltoallv`` each of keys, rows and deltas, packed by destination rank and, within
    it, by table (a loop over ranks and tables, never over keys).
    """
    size = comm.Get_size()
    tables = list(batch.keys)
    rows = {t: np.zeros((sizes[t], parts[t].width), np.float32) for t in tables}
    if size == 1:
        for t, keys in batch.keys.items():
            rows[t][:len(keys)] = parts[t].values[keys]
        loss, deltas = step(rows, batch.data)
        for t, keys in batch.keys.items():
            parts[t].values[keys] += np.asarray(deltas[t])[:len(keys)]
        return loss
    widths = np.array([parts[t].width for t in tables], np.int64)
    order, sent = {}, np.zeros((size, len(tables)), np.int64)  # sent[d, i]: keys to rank d
    for i, t in enumerate(tables):
        owner = batch.keys[t] % size
        order[t] = np.argsort(owner, kind="stable")
        sent[:, i] = np.bincount(owner, minlength=size)
    got = np.empty_like(sent)  # got[d, i]: keys rank d asks of this rank
    comm.Alltoall(sent, got)
    ends = {t: np.cumsum(sent[:, i]) for i, t in enumerate(tables)}
    mine = [(i, t, order[t][ends[t][d] - sent[d, i]:ends[t][d]])
            for d in range(size) for i, t in enumerate(tables)]  # positions per block
    keys_out = np.concatenate([batch.keys[t][pos] for _, t, pos in mine])
    asked_all = np.empty(int(got.sum()), np.int64)
    comm.Alltoallv([keys_out, sent.sum(1)], [asked_all, got.sum(1)])
    asked, at = [], 0  # (table, local rows) per block, source-major as they came
    for d in range(size):
        for i, t in enumerate(tables):
            asked.append((t, asked_all[at:at + got[d, i]] // size))
            at += got[d, i]
    rows_out = np.concatenate([parts[t].values[local].reshape(-1) for t, local in asked])
    rows_in = np.empty(int((sent @ widths).sum()), np.float32)
    comm.Alltoallv([rows_out, got @ widths], [rows_in, sent @ widths])
    at = 0
    for i, t, pos in mine:
        n = len(pos) * widths[i]
        rows[t][pos] = rows_in[at:at + n].reshape(len(pos), widths[i])
        at += n
    loss, deltas = step(rows, batch.data)
    host = {t: np.asarray(deltas[t]) for t in tables}
    deltas_out = np.concatenate([host[t][pos].reshape(-1) for _, t, pos in mine])
    deltas_in = np.empty(int((got @ widths).sum()), np.float32)
    comm.Alltoallv([deltas_out, sent @ widths], [deltas_in, got @ widths])
    at = 0
    for t, local in asked:
        # One sender's keys are unique, but two senders may push the same key: each
        # sender's block is added on its own (a loop over ranks and tables, not keys).
        n = len(local) * parts[t].width
        parts[t].values[local] += deltas_in[at:at + n].reshape(len(local), parts[t].width)
        at += n
    return loss


def worker(spec: dict) -> dict | None:
    import itertools

    import jax
    from mpi4py import MPI

    import jaxps
    from train.bench import workloads as bench_workloads
    from train.bench.workloads import BenchOptions

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    workload, params = bench_workloads.parse(spec["workload"])
    problem = workload.build(BenchOptions(spec["data_root"], 0, params), comm)
    parts = {t: Partition(s, t, rank, size) for t, s in problem.tables.items()}
    dims = {t: s.dim for t, s in problem.tables.items()}
    sizes = {t: jaxps.bucket_size(n) for t, n in problem.max_keys.items()}
    compiles = [0]

    def math(rows, data):
        compiles[0] += 1
        return jaxps.loss_and_row_deltas(problem.loss_fn, problem.optimizers, dims, rows, data)

    step = jax.jit(math)
    source = problem.batches(rank, size)
    losses = []
    for batch in itertools.islice(source, spec["warmup"]):
        losses.append(float(exchange_step(comm, parts, step, batch, sizes)))
    compiled = compiles[0]
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    examples = 0
    for batch in itertools.islice(source, spec["steps"]):
        losses.append(float(exchange_step(comm, parts, step, batch, sizes)))
        examples += batch.num_examples
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    comm.Barrier()
    all_ = comm.gather((examples, seconds, cpu, float(np.mean(losses[-10:])),
                        compiles[0] - compiled), root=0)
    if rank != 0:
        return None
    ex = sum(a[0] for a in all_)
    return {"ranks": size, "examples_per_s": ex / max(a[1] for a in all_),
            "examples_per_cpu_s": ex / sum(a[2] for a in all_),
            "loss": float(np.mean([a[3] for a in all_])),
            "timed_compiles": max(a[4] for a in all_), "steps": spec["steps"]}


def run_job(args, ranks: int) -> dict:
    spec = {"workload": args.workload, "data_root": args.data_root, "steps": args.steps,
            "warmup": args.warmup}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = ["mpiexec", "-n", str(ranks), "-bind-to", "core", sys.executable, "-m",
               "train.bench.lockstep", "--worker", json.dumps(spec), "--json", str(out)]
        if ranks == 1 and hasattr(os, "sched_setaffinity"):
            cmd = ["taskset", "-c", "0", *cmd]
        res = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                             timeout=args.timeout)
        if res.returncode != 0:
            raise SystemExit(f"train.bench.lockstep: the {ranks}-rank job failed "
                             f"(exit {res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    from train.common.outputs import write_json

    if args.worker:
        result = worker(json.loads(args.worker))
        if result is not None:
            write_json(Path(args.json), result)
        return 0
    from train.bench import workloads as bench_workloads
    from train.bench.workloads import BenchOptions

    workload, params = bench_workloads.parse(args.workload)
    options = BenchOptions(args.data_root, 0, params)
    missing = workload.unavailable(options)
    if missing:
        raise SystemExit(f"train.bench.lockstep: workload {args.workload!r}: {missing}")
    workload.prepare(options)  # generate or parse once, before the ranks start
    table = {}
    for ranks in args.rank_counts:
        jobs = sorted((run_job(args, ranks) for _ in range(args.repeats)),
                      key=lambda r: r["examples_per_s"])
        med = jobs[len(jobs) // 2] | {"spread": [j["examples_per_s"] for j in jobs],
                                      "spread_cpu": [j["examples_per_cpu_s"] for j in jobs]}
        if med["timed_compiles"]:
            raise SystemExit(f"train.bench.lockstep: {med['timed_compiles']} compiles in the "
                             "timed steps; raise --warmup")
        table[ranks] = med
        print(f"{args.workload}, {ranks} rank(s): {med['examples_per_s']:,.0f} examples/s "
              f"({min(med['spread']):,.0f}-{max(med['spread']):,.0f}), "
              f"{med['examples_per_cpu_s']:,.0f} per CPU-s, loss {med['loss']:.4f}",
              flush=True)
    if 1 in table and len(table) > 1:
        for r, m in table.items():
            if r != 1:
                print(f"{r} ranks / 1 rank: {m['examples_per_s'] / table[1]['examples_per_s']:.2f}"
                      f" examples/s, {m['examples_per_cpu_s'] / table[1]['examples_per_cpu_s']:.2f}"
                      " per CPU-s")
    if args.json:
        write_json(Path(args.json), {"workload": args.workload, "steps": args.steps,
                                     "runs": table})
    return 0


if __name__ == "__main__":
    import jaxps

    # A failure on one rank ends the whole job (its peers would wait in a collective).
    sys.exit(jaxps.run_main(main))
