"""Replay a trace for one technique and rank count (``replay``), or many (``compare``)."""

from __future__ import annotations

import numpy as np

from train.trace import Trace
from train.whatif.ledger import TECHNIQUES, Estimate, Ledger, Network, estimate
from train.whatif.steps import STEPS, adaptive_window

def _pairs(trace: Trace, n: int) -> tuple[int, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """Per table and simulated clock: (rank, key) of unique keys per batch, after redistribution."""
    batches = trace.batches()
    clocks = -(-len(batches) // n)
    out = {}
    for name in trace.tables:
        per_clock = []
        for c in range(clocks):
            rs, ks = [], []
            for i in range(c * n, min((c + 1) * n, len(batches))):
                keys = batches[i].get(name)
                if keys is not None and len(keys):
                    u = np.unique(keys)
                    ks.append(u)
                    rs.append(np.full(len(u), i % n, np.int64))
            per_clock.append((np.concatenate(rs), np.concatenate(ks)) if ks
                             else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        out[name] = per_clock
    return clocks, out


def _hot_mask(trace: Trace, name: str, hot_fraction: float) -> np.ndarray:
    num_keys = trace.tables[name][0]
    counts = np.zeros(num_keys, np.int64)
    for clocks in trace.ranks:
        for d in clocks:
            if name in d and len(d[name]):
                counts += np.bincount(d[name], minlength=num_keys)
    hot = np.zeros(num_keys, bool)
    n_hot = int(round(hot_fraction * num_keys))
    if n_hot:
        hot[np.argsort(-counts, kind="stable")[:n_hot]] = True
    return hot & (counts > 0)


def replay(trace: Trace, technique: str, *, ranks: int, network: Network = Network(),
           window: int = 2, hot_fraction: float = 0.01, sync: str = "touched",
           _pairs_cache=None) -> Estimate:
    """Estimate one technique on ``ranks`` simulated ranks (see the module docstring).

    Args:
      trace: the recorded (or synthetic) accesses.
      technique: one of `TECHNIQUES`.
      ranks: simulated rank count, 1..64.
      network: bandwidth, latency and compute per clock.
      window: adaptive only: clocks per intent window.
      hot_fraction: nups only: share of keys (the most accessed) replicated everywhere.
      sync: replication and nups: which replicas sync each clock: "touched" (the keys the rank
        accessed that clock; an implementation that tracks dirty replicas) or "held" (every
        replica the rank holds, as jaxps' `start_sync` does today).
    """
    if technique not in TECHNIQUES:
        raise ValueError(f"unknown technique {technique!r}; choose from {', '.join(TECHNIQUES)}")
    if not 1 <= ranks <= 64:
        raise ValueError(f"ranks must be in 1..64, got {ranks}")
    if sync not in ("touched", "held"):
        raise ValueError(f"sync must be 'touched' or 'held', got {sync!r}")
    if window < 1 or network.bandwidth <= 0 or network.latency < 0 or network.compute_ms < 0:
        raise ValueError("need window >= 1, bandwidth > 0, latency >= 0, compute_ms >= 0")
    clocks, pairs = _pairs_cache or _pairs(trace, ranks)
    led = Ledger(max(clocks, 1), ranks)
    for name, (num_keys, row) in trace.tables.items():
        owner = (np.arange(num_keys) % ranks).astype(np.int64)
        if technique == "adaptive":
            for w0 in range(0, clocks, window):
                ts = range(w0, min(w0 + window, clocks))
                t = np.concatenate([np.full(len(pairs[name][c][1]), c, np.int64) for c in ts])
                r = np.concatenate([pairs[name][c][0] for c in ts])
                k = np.concatenate([pairs[name][c][1] for c in ts])
                adaptive_window(led, t, r, k, row, owner)
            continue
        state = {"owner": owner, "sync": sync,
                 "table_per_home": np.bincount(np.arange(num_keys) % ranks, minlength=ranks)}
        if technique == "nups":
            state["hot"] = _hot_mask(trace, name, hot_fraction)
            state["hot_per_home"] = np.bincount(np.flatnonzero(state["hot"]) % ranks,
                                                minlength=ranks)
        for c in range(clocks):
            r, k = pairs[name][c]
            STEPS[technique](led, c, r, k, row, state)
    return estimate(led, technique, clocks, network)



def compare(trace: Trace, *, ranks: list[int], techniques=TECHNIQUES,
            network: Network = Network(), window: int = 2, hot_fraction: float = 0.01,
            sync: str = "touched") -> list[Estimate]:
    """`replay` for every (rank count, technique)."""
    out = []
    for n in ranks:
        cache = _pairs(trace, n)
        out += [replay(trace, t, ranks=n, network=network, window=window, hot_fraction=hot_fraction,
                       sync=sync, _pairs_cache=cache) for t in techniques]
    return out


def markdown(estimates: list[Estimate]) -> str:
    """A markdown table; "vs classic" is classic's estimated time / this one's (same rank count)."""
    classic = {e.ranks: e.time_s for e in estimates if e.technique == "classic"}
    lines = ["| ranks | technique | local | MB/clock | msgs/clock | comm s/epoch | exposed s/epoch "
             "| est. s/epoch | vs classic |", "|---|---|---|---|---|---|---|---|---|"]
    for e in estimates:
        vs = f"{classic[e.ranks] / e.time_s:.2f}x" if e.ranks in classic and e.time_s else "-"
        lines.append(f"| {e.ranks} | {e.technique} | {e.local_fraction:.1%} | "
                     f"{e.bytes_per_clock / 1e6:.3f} | {e.messages_per_clock:.0f} | {e.comm_s:.3f} | "
                     f"{e.exposed_s:.3f} | {e.time_s:.3f} | {vs} |")
    return "\n".join(lines)

