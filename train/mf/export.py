"""What a train.mf run leaves in --out besides metrics and summary: the factors, biases and
id maps (readable without jaxps), each written atomically (train/common/outputs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.common import outputs
from train.mf.config import MfConfig
from train.mf.data import RatingsDataset


def out_bytes(tables: dict, dim: int) -> int:
    """Disk space a run needs in --out: the exports plus one checkpoint, and a margin."""
    exports = sum(spec.num_keys * (dim + 1) * 4 for spec in tables.values())
    checkpoint = sum(spec.num_keys * (spec.width * 4 + 8) for spec in tables.values())
    return exports + checkpoint + (1 << 20)


def export_factors(ps, out: Path, dataset: RatingsDataset, config: MfConfig, *,
                   chunk: int = 1 << 16) -> list[str]:
    """Rank 0: {user,item}_factors.npy [n, dim], {user,item}_bias.npy [n], id maps
    ({user,item}_ids.txt, one original id per line) and model.json (mean, rating range).

    Each file is written atomically, pulled chunk by chunk (no whole-table copy in memory).
    Returns the names of the files written.
    """
    written, d = [], config.dim
    for table, ids in (("user", dataset.user_ids), ("item", dataset.item_ids)):
        n = ps.tables[table].num_keys
        for file, shape, cols in ((f"{table}_factors.npy", (n, d), slice(0, d)),
                                  (f"{table}_bias.npy", (n,), d)):
            parts = (ps.pull(table, np.arange(a, min(a + chunk, n)))[:, cols]
                     for a in range(0, n, chunk))
            outputs.write_npy(out / file, shape, parts)
            written.append(file)
        outputs.write_text(out / f"{table}_ids.txt", "".join(f"{x}\n" for x in ids.tolist()))
        written.append(f"{table}_ids.txt")
    outputs.write_json(out / "model.json", {
        "model": "biased-mf", "mean": dataset.mean, "rating_range": dataset.rating_range,
        "dim": d, "predict": "mean + user_bias[u] + item_bias[i] + user_factors[u] @ "
        "item_factors[i], clipped to rating_range"})
    return written + ["model.json"]
