"""What-if: replay an access trace for every technique on a simulated network and rank count.

An *estimate*, not a measurement: it counts the bytes and messages the jaxps protocol would send
for the recorded accesses and turns them into time with a simple network model. It shows how
the techniques would compare on a cluster this machine cannot provide (issue 5, item 5).
See docs/whatif.md for the full model; the main assumptions:

* Redistribution: global batch i (recorded clock t, rank r -> i = t * R + r) goes to simulated
  rank i % N at simulated clock i // N. A batch's accesses are its unique keys per table.
* Messages (jaxps/_src/protocol.py): a 64-byte header each, and every message carries 16 bytes
  per key (int64 key + int64 position), replies and acks included; messages with rows add
  ``row_bytes`` per key (parameter + optimizer state). One message per (operation, source,
  destination) and clock. Pull = request (16/key) + reply (row+16/key); push = row+16 per key +
  an ack (16/key); relocation = requester -> home (16/key) -> old owner (16/key) -> requester
  (row+16/key), hops on the same rank are free; replica creation = intent (16/key) + replica
  (row+16/key); replica sync = delta up + fresh row down (row+16/key each).
* classic: key k lives on k % N; every other access is a pull (on demand) and a push.
* replication: every access local; each clock every rank sends the deltas of the keys it touched
  to their owner (k % N), and each owner sends the fresh rows of every key touched by anyone
  that clock to every other rank. ``sync="held"`` instead syncs every replica every clock, as
  jaxps' sync round does today (the whole table per rank and clock).
* relocation (Lapse): a key moves to the rank that accesses it; the move is signalled one clock
  ahead (intent), so it runs during the previous clock's compute. Ranks that want the same key
  at the same clock: the current owner keeps it if it is one of them, else one of them (rotating)
  gets it and the others pull/push it remotely.
* nups: the ``hot_fraction`` most accessed keys (over the whole trace) are replicated on every
  rank; touched hot keys (``sync="held"``: all hot keys) sync with their home every clock; all
  other keys as relocation.
* adaptive (AdaPS): clocks are cut into windows of ``window`` clocks (the intent horizon).
  A key one rank accesses in a window relocates to it (once; it stays until another rank wants
  it); a key several ranks access is replicated on each of them but the owner, from its first
  to its last access in the window (the intent), syncing every clock in between, and dropped
  (residual delta + ack) after the last access. Creation and relocation are signalled one
  clock ahead.
* Actions for clock 0 cannot be signalled ahead: they run on demand and those accesses count as
  remote. Otherwise, an access is local when its key is owned or replicated on the rank once the
  actions signalled for that clock have run ("local fraction"); an action that did not finish in
  time shows as exposed time, not as a remote access.
* Time: per clock and rank, two parts, each ``latency x message rounds + max(bytes sent, bytes
  received) / bandwidth`` (full duplex; parallel messages share one round): *on demand* (pulls,
  actions at clock 0) blocks the step; *background* (actions signalled ahead, pushes, syncs,
  drops) overlaps the compute of that clock. Clock time = max over ranks of
  ``on_demand + max(compute, background)``; exposed communication = clock time - compute. Ranks
  advance in lockstep (bounded staleness), hence the max. CPU cost of (de)serialization,
  forwarding via stale location hints, contention beyond a rank's own link, and stragglers
  are not modelled.

Usage:
    python -m train.whatif TRACE_PREFIX --ranks 8,16,64 --bandwidth 10e9 --latency 20e-6 \
        --compute-ms 10 --techniques all --json OUT.json
    python -m train.whatif --synthetic --ranks 8,16,64        # on a generated trace
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from train.trace import Trace, load_trace, synthetic_trace

__all__ = ["TECHNIQUES", "Network", "Estimate", "replay", "compare", "markdown", "main"]

TECHNIQUES = ("classic", "replication", "relocation", "nups", "adaptive")
HEADER_BYTES = 64   # int64[8] header of every jaxps message
KEY_BYTES = 16      # int64 key + int64 position per key
DEMAND, BACKGROUND = 0, 1


@dataclass(frozen=True)
class Network:
    """Simulated network and step: per-rank full-duplex link, one-way latency, compute per clock."""
    bandwidth: float = 10e9     # bits/s per rank
    latency: float = 20e-6      # s per message round (one way)
    compute_ms: float = 10.0    # compute time of one clock (one batch)


@dataclass
class Estimate:
    """Estimated cost of one technique on ``ranks`` simulated ranks for the trace (one epoch)."""
    technique: str
    ranks: int
    clocks: int
    local_fraction: float         # share of (batch, unique key) accesses served locally
    bytes_per_clock: float        # bytes sent by all ranks together, per clock
    messages_per_clock: float     # messages sent by all ranks together, per clock
    relocations_per_clock: float
    replicas_per_clock: float     # replicas created per clock
    comm_s: float                 # communication s per epoch (sum over clocks of max over ranks)
    exposed_s: float              # communication not hidden behind compute, per epoch
    time_s: float                 # estimated epoch time
    per_clock: dict = field(default_factory=dict, repr=False)   # arrays [clocks], for analysis

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("per_clock")
        return d


class _Ledger:
    """Bytes, messages and message rounds per (bucket, clock, rank), plus access counts."""

    def __init__(self, clocks: int, n: int):
        self.n, self.clocks = n, clocks
        self.sent = np.zeros((2, clocks, n))
        self.recv = np.zeros((2, clocks, n))
        self.msgs = np.zeros((2, clocks, n))
        self.rounds = np.zeros((2, clocks, n))
        self.local = np.zeros(clocks)
        self.total = np.zeros(clocks)
        self.relocations = np.zeros(clocks)
        self.replicas = np.zeros(clocks)

    def send(self, bucket, t, src, dst, per_key: int) -> None:
        """One message per distinct (bucket, t, src, dst) of these keys; same-rank hops are free."""
        bucket, t, src, dst = np.broadcast_arrays(bucket, t, src, dst)
        keep = src != dst
        if not keep.any():
            return
        n = self.n
        slot = bucket[keep].astype(np.int64) * self.clocks + t[keep]
        code = (slot * n + src[keep]) * n + dst[keep]
        u, cnt = np.unique(code, return_counts=True)
        d, s = u % n, (u // n) % n
        tt, bb = (u // (n * n)) % self.clocks, u // (n * n * self.clocks)
        nbytes = HEADER_BYTES + per_key * cnt
        size = self.sent.size
        self.sent.ravel()[:] += np.bincount((bb * self.clocks + tt) * n + s, nbytes, size)
        self.recv.ravel()[:] += np.bincount((bb * self.clocks + tt) * n + d, nbytes, size)
        self.msgs.ravel()[:] += np.bincount((bb * self.clocks + tt) * n + s, None, size)

    def wait(self, bucket, t, rank, rounds: int) -> None:
        """``rank`` waits ``rounds`` sequential message latencies at clock ``t``."""
        bucket, t, rank = np.broadcast_arrays(bucket, t, rank)
        flat = self.rounds.ravel()      # a view: the array is contiguous
        idx = (bucket.astype(np.int64) * self.clocks + t) * self.n + rank
        flat[idx] = np.maximum(flat[idx], rounds)   # one value per call: duplicates are harmless

    def access(self, t, local) -> None:
        t, local = np.broadcast_arrays(t, local)
        self.total += np.bincount(t.ravel(), None, self.clocks)
        self.local += np.bincount(t.ravel(), local.ravel().astype(np.float64), self.clocks)


def _slot(t):
    """Where an action needed at clock t runs: on demand at clock 0, else ahead during t - 1."""
    t = np.asarray(t)
    return np.where(t == 0, DEMAND, BACKGROUND), np.maximum(t - 1, 0)


def _remote(led: _Ledger, t, r, o, row: int) -> None:
    """Pull (on demand) and push (background) of keys owned by o, from rank r."""
    led.send(DEMAND, t, r, o, KEY_BYTES)
    led.send(DEMAND, t, o, r, row + KEY_BYTES)
    led.wait(DEMAND, t, r[r != o], 2)
    led.send(BACKGROUND, t, r, o, row + KEY_BYTES)
    led.send(BACKGROUND, t, o, r, KEY_BYTES)
    led.wait(BACKGROUND, t, r[r != o], 2)


def _relocate(led: _Ledger, t, r, k, owner: np.ndarray, row: int) -> None:
    """Move keys k to ranks r for clock t (3 messages: r -> home -> old owner -> r)."""
    if len(k) == 0:
        return
    b, ts = _slot(t)
    home, old = k % led.n, owner[k]
    led.send(b, ts, r, home, KEY_BYTES)
    led.send(b, ts, home, old, KEY_BYTES)
    led.send(b, ts, old, r, row + KEY_BYTES)
    led.wait(b, ts, r, 3)
    led.relocations += np.bincount(np.broadcast_to(ts, k.shape).ravel(), None, led.clocks)
    owner[k] = r


def _classic(led, t, r, k, row, state):
    o = k % led.n
    led.access(t, o == r)
    far = o != r
    _remote(led, t, r[far], o[far], row)


def _sync_held(led, t, per_home: np.ndarray, row: int) -> None:
    """Every rank syncs every replica it holds with the key's home: delta up, fresh row back.

    per_home[d]: replicated keys homed on rank d (each rank holds all of them but its own).
    """
    n = led.n
    m = np.where(per_home > 0, HEADER_BYTES + (row + KEY_BYTES) * per_home, 0).astype(float)
    each = (m.sum() - m) + (n - 1) * m          # deltas/rows to other homes + answers as a home
    led.sent[BACKGROUND, t] += each
    led.recv[BACKGROUND, t] += each
    nz = per_home > 0
    led.msgs[BACKGROUND, t] += (nz.sum() - nz) + (n - 1) * nz
    if n > 1:
        led.rounds[BACKGROUND, t] = np.maximum(led.rounds[BACKGROUND, t], 2)


def _replication(led, t, r, k, row, state):
    n = led.n
    led.access(t, np.ones(len(k), bool))
    if state["sync"] == "held":
        _sync_held(led, t, state["table_per_home"], row)
        return
    home = k % n
    led.send(BACKGROUND, t, r, home, row + KEY_BYTES)       # deltas up
    led.wait(BACKGROUND, t, r[r != home], 2)
    per_owner = np.bincount(np.unique(k) % n, minlength=n)   # fresh rows of every touched key
    nbytes = np.where(per_owner > 0, HEADER_BYTES + (row + KEY_BYTES) * per_owner, 0).astype(float)
    led.sent[BACKGROUND, t] += (n - 1) * nbytes
    led.msgs[BACKGROUND, t] += (n - 1) * (per_owner > 0)
    led.recv[BACKGROUND, t] += nbytes.sum() - nbytes


def _relocation_step(led, t, r, k, row, owner):
    """One clock of Lapse with intents one clock ahead (r, k: unique pairs)."""
    if len(k) == 0:
        return
    n = led.n
    order = np.lexsort(((r - k - t) % n, r != owner[k], k))
    r, k = r[order], k[order]
    first = np.ones(len(k), bool)
    first[1:] = k[1:] != k[:-1]
    win_r, win_k = r[first], k[first]
    move = owner[win_k] != win_r
    led.access(t, ~move if t == 0 else np.ones(int(move.size), bool))
    _relocate(led, t, win_r[move], win_k[move], owner, row)
    lose = ~first
    led.access(t, np.zeros(int(lose.sum()), bool))
    _remote(led, t, r[lose], owner[k[lose]], row)


def _relocation(led, t, r, k, row, state):
    _relocation_step(led, t, r, k, row, state["owner"])


def _nups(led, t, r, k, row, state):
    hot = state["hot"][k]
    led.access(t, np.ones(int(hot.sum()), bool))
    if state["sync"] == "held":
        _sync_held(led, t, state["hot_per_home"], row)
    else:
        hr, hk = r[hot], k[hot]
        home = hk % led.n
        led.send(BACKGROUND, t, hr, home, row + KEY_BYTES)
        led.send(BACKGROUND, t, home, hr, row + KEY_BYTES)
        led.wait(BACKGROUND, t, hr[hr != home], 2)
    _relocation_step(led, t, r[~hot], k[~hot], row, state["owner"])


def _adaptive_window(led, t, r, k, row, owner):
    """One intent window of AdaPS; t, r, k: (clock, rank, key) of unique accesses per clock."""
    if len(k) == 0:
        return
    order = np.lexsort((t, r, k))
    t, r, k = t[order], r[order], k[order]
    o = owner[k]
    led.access(t, (t > 0) | (o == r))                      # clock 0: nothing was signalled ahead
    start = np.ones(len(k), bool)
    start[1:] = (k[1:] != k[:-1]) | (r[1:] != r[:-1])
    starts = np.flatnonzero(start)
    ends = np.append(starts[1:], len(k)) - 1
    gr, gk, first, last = r[starts], k[starts], t[starts], t[ends]
    kstart = np.ones(len(gk), bool)
    kstart[1:] = gk[1:] != gk[:-1]
    kid = np.cumsum(kstart) - 1
    nranks = np.bincount(kid)[kid]
    go = owner[gk]
    single = (nranks == 1) & (go != gr)
    _relocate(led, first[single], gr[single], gk[single], owner, row)
    rep = (nranks > 1) & (go != gr)
    rr, rk, ro, rf, rl = gr[rep], gk[rep], go[rep], first[rep], last[rep]
    if len(rk) == 0:
        return
    b, ts = _slot(rf)                                       # create: intent to owner, row back
    led.send(b, ts, rr, ro, KEY_BYTES)
    led.send(b, ts, ro, rr, row + KEY_BYTES)
    led.wait(b, ts, rr, 2)
    led.replicas += np.bincount(ts, None, led.clocks)
    span = rl - rf                          # syncs while held, before the last access
    if span.sum():
        idx = np.repeat(np.arange(len(rk)), span)
        st = rf[idx] + (np.arange(len(idx)) - np.repeat(np.cumsum(span) - span, span))
        led.send(BACKGROUND, st, rr[idx], ro[idx], row + KEY_BYTES)
        led.send(BACKGROUND, st, ro[idx], rr[idx], row + KEY_BYTES)
        led.wait(BACKGROUND, st, rr[idx], 2)
    led.send(BACKGROUND, rl, rr, ro, row + KEY_BYTES)       # drop: residual delta + ack
    led.send(BACKGROUND, rl, ro, rr, KEY_BYTES)
    led.wait(BACKGROUND, rl, rr, 2)


_STEP = {"classic": _classic, "replication": _replication, "relocation": _relocation,
         "nups": _nups}


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
    led = _Ledger(max(clocks, 1), ranks)
    for name, (num_keys, row) in trace.tables.items():
        owner = (np.arange(num_keys) % ranks).astype(np.int64)
        if technique == "adaptive":
            for w0 in range(0, clocks, window):
                ts = range(w0, min(w0 + window, clocks))
                t = np.concatenate([np.full(len(pairs[name][c][1]), c, np.int64) for c in ts])
                r = np.concatenate([pairs[name][c][0] for c in ts])
                k = np.concatenate([pairs[name][c][1] for c in ts])
                _adaptive_window(led, t, r, k, row, owner)
            continue
        state = {"owner": owner, "sync": sync,
                 "table_per_home": np.bincount(np.arange(num_keys) % ranks, minlength=ranks)}
        if technique == "nups":
            state["hot"] = _hot_mask(trace, name, hot_fraction)
            state["hot_per_home"] = np.bincount(np.flatnonzero(state["hot"]) % ranks,
                                                minlength=ranks)
        for c in range(clocks):
            r, k = pairs[name][c]
            _STEP[technique](led, c, r, k, row, state)
    return _estimate(led, technique, clocks, network)


def _estimate(led: _Ledger, technique: str, clocks: int, net: Network) -> Estimate:
    bps = net.bandwidth / 8
    part = net.latency * led.rounds + np.maximum(led.sent, led.recv) / bps   # [2, clocks, ranks]
    compute = net.compute_ms / 1e3
    clock_time = (part[DEMAND] + np.maximum(compute, part[BACKGROUND])).max(axis=1)
    comm = (part[DEMAND] + part[BACKGROUND]).max(axis=1)
    c = max(clocks, 1)
    sent = led.sent.sum(axis=(0, 2))
    return Estimate(
        technique=technique, ranks=led.n, clocks=clocks,
        local_fraction=float(led.local.sum() / max(led.total.sum(), 1)),
        bytes_per_clock=float(sent.sum() / c), messages_per_clock=float(led.msgs.sum() / c),
        relocations_per_clock=float(led.relocations.sum() / c),
        replicas_per_clock=float(led.replicas.sum() / c),
        comm_s=float(comm.sum()), exposed_s=float((clock_time - compute).sum()),
        time_s=float(clock_time.sum()),
        per_clock=dict(bytes=sent, local=led.local, total=led.total, time=clock_time, comm=comm))


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Estimate each technique's communication on a "
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
                        "(what jaxps does today)")
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
