"""The PS's counters: their names, and the one place their arithmetic is done."""

from __future__ import annotations

WAIT_KINDS = ("pull", "push", "set", "localize", "intent", "drop", "sync", "barrier")
STAT_KEYS = ("pull_local", "pull_remote", "push_local", "push_remote", "bytes_sent",
             "bytes_received", "messages_sent", "messages_received", "relocations",
             "relocations_out", "forwards", "replicas_created", "replicas_dropped",
             "sync_rounds", "max_staleness", "wait_seconds",
             *(f"wait_{kind}_seconds" for kind in WAIT_KINDS))
GAUGES = ("local_fraction", "max_staleness", "owned", "replicas")  # values, not counters


def new_counters() -> dict:
    """Zeroed counters; the same keys on every rank, so that ranks can reduce them."""
    return {k: 0.0 if k.startswith("wait_") else 0 for k in STAT_KEYS}


def reset(counters: dict) -> None:
    for k in counters:
        counters[k] = 0.0 if k.startswith("wait_") else 0


def with_local_fraction(out: dict) -> dict:
    """``out`` with ``local_fraction`` = local pulls / all pulls (1.0 without pulls)."""
    pulls = out.get("pull_local", 0) + out.get("pull_remote", 0)
    out["local_fraction"] = out.get("pull_local", 0) / pulls if pulls else 1.0
    return out


def snapshot(engine) -> dict:
    """``ParameterServer.stats()``: the counters, keys owned per table, replicas held,
    ``local_fraction``. Takes the engine lock."""
    with engine.lock:
        out = dict(engine.stats)
        out["owned"] = {t.name: t.store.num_owned for t in engine.tables}
        out["replicas"] = sum(t.replicas.count for t in engine.tables
                              if t.replicas is not None)
    return with_local_fraction(out)


def delta(before: dict, after: dict) -> dict:
    """The counters' increase between two ``ps.stats()`` (``jaxps.stats_delta``): gauges
    (``GAUGES``: local fraction, staleness, owned and replicated rows) are left out, and
    the local share of pulls is recomputed from the increase."""
    return with_local_fraction({k: v - before.get(k, 0) for k, v in after.items()
                                if k not in GAUGES and isinstance(v, (int, float))})
