"""``python -m train.whatif``: the what-if estimate on the command line (docs/whatif.md)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from train.trace import load_trace, synthetic_trace
from train.whatif.ledger import TECHNIQUES, Network
from train.whatif.replay import compare, markdown


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.whatif", description="Estimate each technique's communication on a "
                                "simulated network by replaying an access trace (an estimate).")
    p.add_argument("trace", nargs="?", help="trace prefix (files PREFIX.rank<R>.npz)")
    p.add_argument("--synthetic", action="store_true",
                   help="replay a generated trace (train.trace.synthetic_trace) instead")
    p.add_argument("--ranks", default="8,16,64", help="comma-separated simulated rank counts (1..64)")
    p.add_argument("--bandwidth", type=float, default=10e9, help="bits/s per rank (full duplex)")
    p.add_argument("--latency", type=float, default=20e-6, help="seconds per message round")
    p.add_argument("--compute-ms", type=float, default=10.0, help="compute per clock (batch)")
    p.add_argument("--techniques", default="all", help="comma-separated, or 'all'")
    p.add_argument("--window", type=int, default=2, help="adaptive: clocks per intent window")
    p.add_argument("--hot-fraction", type=float, default=0.01, help="nups: share of keys replicated")
    p.add_argument("--sync", choices=("touched", "held"), default="touched",
                   help="replication/nups: sync the replicas touched this clock, or all held ones "
                        "(an upper bound; jaxps sends the rows of touched plus a key and stamp "
                        "per held replica)")
    p.add_argument("--json", help="write the estimates to this JSON file")
    g = p.add_argument_group("synthetic trace")
    g.add_argument("--syn-ranks", type=int, default=16, help="recorded rank count")
    g.add_argument("--syn-clocks", type=int, default=256, help="clocks per recorded rank")
    g.add_argument("--syn-keys", type=int, default=100_000, help="table size")
    g.add_argument("--syn-batch", type=int, default=512, help="keys per batch")
    g.add_argument("--syn-zipf", type=float, default=1.1, help="skew of the shared keys")
    g.add_argument("--syn-private", type=float, default=0.5, help="private share of a batch")
    g.add_argument("--syn-row-bytes", type=int, default=512, help="bytes per row incl. optimizer state")
    g.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.synthetic == bool(a.trace):
        p.error("give a TRACE prefix or --synthetic (exactly one)")
    try:
        ranks = [int(x) for x in a.ranks.split(",")]
    except ValueError as e:
        raise SystemExit(f"--ranks: expected comma-separated integers, got {a.ranks!r}") from e
    techniques = TECHNIQUES if a.techniques == "all" else tuple(a.techniques.split(","))
    if a.synthetic:
        trace = synthetic_trace(a.syn_ranks, a.syn_clocks, a.syn_keys, a.syn_batch, a.syn_zipf,
                                a.syn_private, a.seed, row_bytes=a.syn_row_bytes)
        source = (f"synthetic: {a.syn_ranks} ranks x {a.syn_clocks} clocks, {a.syn_batch} keys/batch, "
                  f"{a.syn_keys} keys, zipf {a.syn_zipf}, private {a.syn_private}, "
                  f"{a.syn_row_bytes} B/row")
    else:
        trace = load_trace(a.trace)
        source = f"{a.trace}: {trace.num_ranks} ranks x {trace.num_clocks} clocks"
    net = Network(a.bandwidth, a.latency, a.compute_ms)
    est = compare(trace, ranks=ranks, techniques=techniques, network=net, window=a.window,
                  hot_fraction=a.hot_fraction, sync=a.sync)
    print(f"what-if estimate ({source}); {a.bandwidth / 1e9:g} Gbit/s, {a.latency * 1e6:g} us, "
          f"{a.compute_ms:g} ms compute/clock, sync {a.sync}; epoch = the whole trace")
    print(markdown(est))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(
            source=source, network=asdict(net), window=a.window, hot_fraction=a.hot_fraction,
            sync=a.sync,
            estimates=[e.to_json() for e in est]), indent=1))


if __name__ == "__main__":
    main()
