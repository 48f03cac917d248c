"""What the transport needs to know of the machine and the (emulated) network."""

from __future__ import annotations

import math
import os

from mpi4py import MPI

from .errors import InputError


def cores_shared(comm: MPI.Comm) -> bool:
    """Collective: do ranks of this host share cores (more ranks than the cores they may
    run on, e.g. 4 ranks on 2 cores)? Then a waiting rank must not poll (spin)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        cores = node.allgather(sorted(os.sched_getaffinity(0)))
    finally:
        node.Free()
    return len(set().union(*map(set, cores))) < len(cores)


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
