"""PS counters summed over the ranks of a run (what the KGE and MF epoch lines report)."""

from __future__ import annotations


def sum_counters(parts) -> dict:
    """PS counters (``EpochMetrics.ps`` dicts, possibly with different keys) summed, and the
    share of pulls served locally recomputed from the sums."""
    total: dict = {}
    for part in parts:
        for k, v in part.items():
            if k != "local_fraction":
                total[k] = total.get(k, 0) + v
    pulls = total.get("pull_local", 0) + total.get("pull_remote", 0)
    total["local_fraction"] = total.get("pull_local", 0) / pulls if pulls else 1.0
    return total


def global_stats(stats: dict, comm) -> dict:
    """Collective: this rank's counters ``stats`` summed over all ranks of ``comm``.
    (``allgather`` releases the GIL while it waits, unlike a pickle reduction.)"""
    return sum_counters(comm.allgather(stats))
