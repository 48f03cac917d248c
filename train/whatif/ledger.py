"""What the what-if replay counts: the network and estimate records, and the ledger of bytes,
messages and rounds per (bucket, clock, rank) turned into time (model: train/whatif/__init__.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

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


class Ledger:
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



def estimate(led: "Ledger", technique: str, clocks: int, net: Network) -> Estimate:
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

