"""What the transport needs to know of the machine and the (emulated) network."""

from __future__ import annotations

import collections
import math
import os
import time
from typing import NamedTuple

import numpy as np

from mpi4py import MPI

from .errors import InputError
from .protocol import envelope_send_ns


class Host(NamedTuple):
    """This rank's place on its host (the ranks that share its memory)."""
    local_rank: int     # 0 .. local_size - 1: which accelerator is this rank's share
    local_size: int     # ranks on this host
    cores_shared: bool  # more ranks than the cores they may run on (e.g. 4 ranks, 2 cores):
                        # then a waiting rank must not poll (spin)


def host_placement(comm: MPI.Comm) -> Host:
    """Collective: this rank's ``Host`` among the ranks of ``comm``."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        cores = node.allgather(sorted(os.sched_getaffinity(0)))
        rank = node.Get_rank()
    finally:
        node.Free()
    return Host(rank, len(cores), len(set().union(*map(set, cores))) < len(cores))


def emulated_network() -> tuple[float, float]:
    """(one-way latency s, bandwidth bytes/s) of the emulated network, from the debug
    switches JAXPS_NET_LATENCY_US and JAXPS_NET_GBITS (unset: none)."""
    values = []
    for name, scale in (("JAXPS_NET_LATENCY_US", 1e-6), ("JAXPS_NET_GBITS", 1e9 / 8)):
        raw = os.environ.get(name, "").strip()
        try:
            value = float(raw) if raw else 0.0
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0:
            raise InputError(f"environment variable {name}={raw!r} must be a number >= 0 "
                             f"(unset it for no emulated network)")
        values.append(value * scale)
    return values[0], values[1]


class EmulatedNetwork:
    """Holds received envelopes until a network of ``latency_s`` one-way latency and
    ``bandwidth`` bytes/s would have delivered them (0, 0: off). FIFO per peer holds:
    an envelope is due no earlier than the previous one from the same peer."""

    def __init__(self, size: int, latency_s: float, bandwidth: float):
        self._latency_ns = int(latency_s * 1e9)
        self._ns_per_byte = 1e9 / bandwidth if bandwidth else 0.0
        self.on = bool(self._latency_ns or self._ns_per_byte)
        self._held: collections.deque = collections.deque()  # (due ns, source, buf)
        self._due_from = np.zeros(size, np.int64)     # last delivery time per peer

    @property
    def empty(self) -> bool:
        return not self._held

    def hold(self, source: int, buf: np.ndarray) -> None:
        """Hold ``buf`` (sent at the time in its envelope header) until it is due."""
        due = max(envelope_send_ns(buf) + self._latency_ns, int(self._due_from[source]))
        due += int(len(buf) * self._ns_per_byte)
        self._due_from[source] = due
        # One latency for all: envelopes become due in arrival order, except that a
        # bandwidth cap can make a big one from one peer due after a small one from another.
        self._held.append((due, source, buf))
        if len(self._held) > 1 and self._held[-2][0] > due:
            self._held = collections.deque(sorted(self._held, key=lambda x: x[0]))

    def due(self) -> list:
        """(source, envelope) of the held envelopes now due, in delivery order."""
        out = []
        if self._held:
            now = time.monotonic_ns()
            while self._held and self._held[0][0] <= now:
                _, source, buf = self._held.popleft()
                out.append((source, buf))
        return out

    def next_due_s(self) -> float:
        """Seconds until the next held envelope is due."""
        return (self._held[0][0] - time.monotonic_ns()) / 1e9
