"""Where one call's time goes: the no-PS step against the PS trainer's pieces, one process.

Usage:
    python -m train.bench.calls [--workload kge-zipf-small] [--steps-per-call 32]
                                [--calls 15] [--data-root ../shared/data] [--json F]

On one rank (pin it: ``taskset -c 0``), for the same batches of a registered workload:
``local`` is one call of the no-PS baseline (``DenseTrainer``: the tables are device arrays,
updated in place); the PS trainer's call (technique ``adaptive``, every row local) is split
into ``window`` (grouping K prepared batches: key unions and positions, on the batch thread
in training), ``pull`` (the union's rows into the call's slice), ``step`` (the jitted
call, its NaN check and the transfer of its results), ``push`` and ``tick``
(``advance_clock``). Each piece is timed on its own, so the figures exclude the batch
source and the overlap of the batch thread; ``python -m train.bench`` measures whole runs.
The two kinds of call alternate, so both see the same machine. Prints the minimum and the
median over ``--calls`` calls, in ms per batch (per call / K). To time the pieces apart it
calls the trainers' private steps (``_windows``, ``_compute``, ...), as a profiler must;
their names and the pieces may change with the trainer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np


def measure(args) -> dict:
    import jax
    from mpi4py import MPI

    import jaxps
    from train.bench import workloads as bench_workloads

    workload, params = bench_workloads.parse(args.workload)
    problem = workload.build(bench_workloads.BenchOptions(args.data_root, 0, params),
                             MPI.COMM_SELF)
    k = args.steps_per_call
    batches = list(itertools.islice(problem.batches(0, 1), k * (args.calls + 1)))
    parts = [batches[i * k:(i + 1) * k] for i in range(args.calls + 1)]
    times: dict[str, list] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    dense = jaxps.DenseTrainer(problem.tables, problem.loss_fn, problem.optimizers,
                         max_keys=problem.max_keys, steps_per_call=k)
    groups = list(dense._group(batches))
    with jaxps.ParameterServer(problem.tables, technique="adaptive",
                               comm=MPI.COMM_SELF) as ps:
        trainer = jaxps.SparseTrainer(ps, problem.loss_fn, problem.optimizers,
                                      max_keys=problem.max_keys, steps_per_call=k)
        trainer.compile(batches[0])
        for i, (group, part) in enumerate(zip(groups, parts)):
            def local():
                dense.tables, loss = dense._steps(dense.tables, group[0], group[1])
                jax.block_until_ready((dense.tables, loss))
            timed("local", local)
            w = timed("window", lambda: next(trainer._windows(part)))
            rows = trainer._rows(w)

            def pull():
                for h in [ps._pull_into(t, keys, rows[t]) for t, keys in w.keys.items()]:
                    ps.wait(h)
            timed("pull", pull)
            _, deltas = timed("step", lambda: trainer._compute(w, rows, 1.0, 0))

            def push():
                for t, keys in w.keys.items():
                    ps._push_checked(t, keys, deltas[t])
            timed("push", push)
            del deltas  # the next call reuses its buffers in place
            timed("tick", ps.advance_clock)
            if i == 0:
                times.clear()  # the first call of each kind: warm-up
        union = {t: int(len(keys)) for t, keys in w.keys.items()}
    per_batch = {name: {"min_ms": 1e3 * min(v) / k, "median_ms": 1e3 * float(np.median(v)) / k}
                 for name, v in times.items()}
    ps_total = sum(per_batch[n]["median_ms"] for n in ("window", "pull", "step", "push", "tick"))
    return {"workload": args.workload, "steps_per_call": k, "calls": args.calls,
            "union_rows": union, "ms_per_batch": per_batch,
            "ps_call_median_ms": ps_total,
            "local_over_ps": per_batch["local"]["median_ms"] / ps_total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench.calls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="kge-zipf-small",
                   help="registered workload (python -m train.bench --list), with parameters")
    p.add_argument("--steps-per-call", type=int, default=32, help="K batches per call")
    p.add_argument("--calls", type=int, default=15, help="timed calls of each kind")
    p.add_argument("--data-root", default=None, help="../shared/data for the real datasets")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if args.steps_per_call < 2 or args.calls < 1:
        p.error("--steps-per-call must be >= 2 (a window) and --calls >= 1")
    res = measure(args)
    print(f"{res['workload']}, K = {res['steps_per_call']}, union rows {res['union_rows']}; "
          f"ms per batch over {res['calls']} calls (min / median):")
    for name, v in res["ms_per_batch"].items():
        print(f"  {name:7s} {v['min_ms']:7.3f} / {v['median_ms']:7.3f}")
    print(f"  PS call (window + pull + step + push + tick, medians): "
          f"{res['ps_call_median_ms']:.3f}; local / PS = {res['local_over_ps']:.2f}")
    if args.json:
        from pathlib import Path

        from train.common.outputs import write_json
        write_json(Path(args.json), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
