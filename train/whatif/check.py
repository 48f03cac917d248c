"""Check the what-if simulator against real multi-rank runs on an emulated network.

For one benchmark workload and rank count: record the keys of the batches each rank will
train on (the workload's own batch source, no PS needed), replay that trace with
``train.whatif`` on a network with the given one-way latency, then run the same steps for
real with ``train.bench`` (ranks pinned, ``JAXPS_NET_LATENCY_US`` set), and put the
predicted exposed communication per step beside the measured wait per step.

Usage:
    python -m train.whatif.check --workload kge-zipf-small --ranks 2 --latency-us 1000 \
        --techniques classic,adaptive --steps 1000 --out runs/whatif-check

The simulator's compute per clock is the measured step time of the ``local`` baseline (1
rank, no PS) on the same batches, so both sides assume the same model cost. Results:
``--out/whatif_check.json`` and a markdown table on stdout (docs/whatif.md has one).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from train import whatif
from train.bench import harness as bench, workloads as bench_workloads
from train.bench.workloads import BenchOptions
from train.trace import Trace


def record_trace(workload: str, ranks: int, steps: int, seed: int, data_root: str) -> Trace:
    """The keys each rank's first ``steps`` batches touch (as the bench's timed steps)."""
    from mpi4py import MPI

    spec, params = bench_workloads.parse(workload)
    problem = spec.build(BenchOptions(data_root, seed, params), MPI.COMM_SELF)
    tables = {name: (s.num_keys, 4 * s.width) for name, s in problem.tables.items()}
    per_rank = []
    for r in range(ranks):
        batches = itertools.islice(problem.batches(r, ranks), steps)
        per_rank.append([{t: np.asarray(k) for t, k in b.keys.items()} for b in batches])
    return Trace(tables, per_rank)


def measured(runs: list[dict]) -> dict:
    """technique -> measured seconds per step, wait per step (per rank)."""
    out = {}
    for r in runs:
        if r["status"] != "ok":
            out[r["technique"]] = {"error": bench.headline(r.get("error", ""))}
            continue
        steps = r["steps_per_rank"]
        wait = r["ps_totals"].get("wait_seconds", 0.0) / r["ranks"]
        out[r["technique"]] = {"step_ms": 1e3 * r["seconds"] / steps,
                               "wait_ms_per_step": 1e3 * wait / steps,
                               "local_fraction": r["local_fraction"],
                               "examples_per_s": r["examples_per_s"]}
    return out


def predicted(trace: Trace, techniques, ranks: int, latency_s: float, compute_ms: float,
              bandwidth: float) -> dict:
    """technique -> the simulator's exposed communication and step time per clock."""
    net = whatif.Network(bandwidth=bandwidth, latency=latency_s, compute_ms=compute_ms)
    out = {}
    for tech in techniques:
        est = whatif.replay(trace, tech, ranks=ranks, network=net)
        out[tech] = {"step_ms": 1e3 * est.time_s / est.clocks,
                     "wait_ms_per_step": 1e3 * est.exposed_s / est.clocks,
                     "local_fraction": est.local_fraction}
    return out


def table(result: dict) -> str:
    lines = [f"`{result['command']}` ({result['ranks']} ranks, {result['latency_us']:g} us "
             f"one-way, compute {result['compute_ms']:.2f} ms/step from local@1)", "",
             "| technique | predicted wait ms/step | measured wait ms/step | predicted step ms | "
             "measured step ms | predicted local | measured local |",
             "|---|---|---|---|---|---|---|"]
    for tech, p in result["predicted"].items():
        m = result["measured"].get(tech, {})
        if "error" in m:
            lines.append(f"| {tech} | {p['wait_ms_per_step']:.2f} | {m['error']} | | | | |")
            continue
        lines.append(f"| {tech} | {p['wait_ms_per_step']:.2f} | {m['wait_ms_per_step']:.2f} | "
                     f"{p['step_ms']:.2f} | {m['step_ms']:.2f} | {p['local_fraction']:.1%} | "
                     f"{m['local_fraction']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.whatif.check",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workload", default="kge-zipf-small", help="a train.bench workload")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--latency-us", type=float, default=1000.0, help="one-way latency")
    p.add_argument("--bandwidth", type=float, default=10e9, help="bits/s per rank (simulator)")
    p.add_argument("--techniques", default="classic,adaptive")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per rank")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data-root", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default runs/whatif-check-<time>")
    args = p.parse_args(argv)
    techniques = [t for t in args.techniques.split(",") if t]
    unknown = set(techniques) - set(whatif.TECHNIQUES)
    if unknown or args.ranks < 2 or args.steps < 1:
        p.error(f"need --ranks >= 2, --steps >= 1 and techniques among {whatif.TECHNIQUES}")
    out = args.out or bench.REPO / "runs" / time.strftime("whatif-check-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    common = ["--workloads", args.workload, "--steps", str(args.steps), "--repeats",
              str(args.repeats), "--seed", str(args.seed), "--data-root", args.data_root]
    bench.main([*common, "--techniques", "local", "--ranks", "1", "--out", str(out / "local")])
    local = json.loads((out / "local" / "results.json").read_text())["runs"][0]
    if local["status"] != "ok":
        print(f"the local baseline failed: {local.get('error')}", file=sys.stderr)
        return 1
    compute_ms = 1e3 * local["seconds"] / local["steps_per_rank"]
    bench.main([*common, "--techniques", ",".join(techniques), "--ranks", str(args.ranks),
                "--net-latency", str(args.latency_us), "--out", str(out / "measured")])
    runs = json.loads((out / "measured" / "results.json").read_text())["runs"]
    trace = record_trace(args.workload, args.ranks, args.steps, args.seed, args.data_root)
    result = {"command": " ".join(["python -m train.whatif.check", *(argv or sys.argv[1:])]),
              "workload": args.workload, "ranks": args.ranks, "latency_us": args.latency_us,
              "compute_ms": compute_ms,
              "predicted": predicted(trace, techniques, args.ranks, args.latency_us * 1e-6,
                                     compute_ms, args.bandwidth),
              "measured": measured(runs)}
    (out / "whatif_check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
