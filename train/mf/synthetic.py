"""Synthetic ratings matrices at any scale: Zipf-skewed columns, a low-rank truth plus noise.

Like the generator of the reference MF experiments (Lapse, NuPS: a 10M x 1M matrix with
Zipf(1.1) column frequencies), with a ground truth so that RMSE means something:

    rating(u, i) = 3 + a_u + c_i + <x_u, y_i> + noise

where ``x_u, y_i ~ N(0, rank^-1/2 I_rank)`` (so ``<x_u, y_i>`` has variance 1), biases
``a_u, c_i ~ N(0, 0.3^2)`` and ``noise ~ N(0, noise^2)``: the best achievable test RMSE is
about ``noise``. Rows of cells are uniform over the users; columns follow Zipf(skew) over a
random permutation of the items (so hot items are spread over the id range and over the
ranks' home partitions). Cells are distinct (duplicates are redrawn).

Spec: ``synthetic:rows=R,cols=C,cells=N[,skew=1.1,rank=10,noise=0.5,seed=S]``. Generated
once (vectorized, in chunks) into ``~/.cache/jaxps/mf-synthetic/`` and split by the run's
``--split``; 20M cells take about a minute and 0.5 GB on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from train.kge.data import user_cache_dir
from train.mf.data import DataError, Ratings, make_dataset, read_cache, write_cache

DEFAULTS = {"rows": None, "cols": None, "cells": None, "skew": 1.1, "rank": 10,
            "noise": 0.5, "seed": 0}
_CHUNK = 1 << 20


def parse_spec(spec: str) -> dict:
    """``"synthetic:rows=..,cols=..,cells=.."`` -> its parameters (with defaults)."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    params = dict(DEFAULTS)
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in DEFAULTS:
            raise DataError(f"{spec!r}: parameters are key=value with keys "
                            f"{', '.join(DEFAULTS)}, got {item!r}")
        try:
            params[key] = float(value) if key in ("skew", "noise") else int(float(value))
        except ValueError as e:
            raise DataError(f"{spec!r}: {key} must be a number, got {value!r}") from e
    for key in ("rows", "cols", "cells"):
        if params[key] is None or params[key] < 1:
            raise DataError(f"{spec!r}: give {key}=N (>= 1), e.g. "
                            "synthetic:rows=1000000,cols=100000,cells=20000000")
    if params["cells"] > 0.5 * params["rows"] * params["cols"]:
        raise DataError(f"{spec!r}: cells must be at most half of rows x cols")
    if not (np.isfinite(params["skew"]) and np.isfinite(params["noise"])) or \
            params["skew"] < 0 or params["noise"] < 0 or params["rank"] < 1:
        raise DataError(f"{spec!r}: need finite skew >= 0, finite noise >= 0, rank >= 1")
    return params


def generate(rows: int, cols: int, cells: int, *, skew: float = 1.1, rank: int = 10,
             noise: float = 0.5, seed: int = 0) -> Ratings:
    """``cells`` distinct cells in random order with their ratings (see module docstring)."""
    rng = np.random.default_rng([seed, 11])
    weights = 1.0 / np.arange(1, cols + 1, dtype=np.float64) ** skew
    counts = _column_counts(rng, weights / weights.sum(), cells, cap=max(1, rows // 2))
    item_of_rank = rng.permutation(cols)
    chunks, want = [], counts
    while want.sum():  # redraw the duplicates of each column (each <= rows/2: few rounds)
        items = np.repeat(item_of_rank, want)
        fresh = np.unique(rng.integers(0, rows, len(items), dtype=np.int64) * cols + items)
        for chunk in chunks:  # each chunk is sorted: membership by binary search
            at = np.minimum(np.searchsorted(chunk, fresh), len(chunk) - 1)
            fresh = fresh[chunk[at] != fresh]
        if len(fresh):
            chunks.append(fresh)
        want = want - np.bincount(fresh % cols, minlength=cols)[item_of_rank]
    keys = np.concatenate(chunks)
    keys = keys[rng.permutation(len(keys))]
    users, items = keys // cols, keys % cols
    scale = rank ** -0.25
    x = (rng.standard_normal((rows, rank), dtype=np.float32) * scale)
    y = (rng.standard_normal((cols, rank), dtype=np.float32) * scale)
    a = rng.standard_normal(rows, dtype=np.float32) * 0.3
    c = rng.standard_normal(cols, dtype=np.float32) * 0.3
    ratings = np.empty(cells, np.float32)
    for s in range(0, cells, _CHUNK):
        uu, ii = users[s:s + _CHUNK], items[s:s + _CHUNK]
        ratings[s:s + _CHUNK] = (3.0 + a[uu] + c[ii] + np.einsum("ij,ij->i", x[uu], y[ii])
                                 + noise * rng.standard_normal(len(uu), dtype=np.float32))
    return Ratings(users, items, ratings)


def _column_counts(rng, p: np.ndarray, cells: int, *, cap: int) -> np.ndarray:
    """Cells per column (by popularity rank): multinomial(cells, p), no column above ``cap``
    (the excess goes to the others in proportion to p, as long as they have room)."""
    if cells > cap * len(p):
        raise DataError(f"synthetic: {cells} cells do not fit {len(p)} columns of at most {cap}")
    counts = rng.multinomial(cells, p)
    while (excess := int(np.maximum(counts - cap, 0).sum())):
        counts = np.minimum(counts, cap)
        room = np.where(counts < cap, p, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def load_synthetic(spec: str, fractions) -> "RatingsDataset":  # noqa: F821
    """The matrix of ``spec`` split by ``fractions``: generated once into the cache, then read.

    Not collective: ``train.mf.train.load`` runs it on rank 0 first (a failure there fails
    every rank), then on the others, which read rank 0's file or, on another host with its
    own cache folder, generate their own identical copy (the generator is seeded).
    """
    p = parse_spec(spec)
    name = "synthetic-r{rows}-c{cols}-n{cells}-z{skew:g}-k{rank}-e{noise:g}-s{seed}".format(**p)
    split_key = "-".join(f"{f:g}" for f in fractions)
    path = user_cache_dir() / "mf-synthetic" / f"{name}-split{split_key}.npz"
    dataset = read_cache(path)
    if dataset is None:
        cells = generate(p["rows"], p["cols"], p["cells"], skew=p["skew"], rank=p["rank"],
                         noise=p["noise"], seed=p["seed"])
        dataset = split_dataset(name, cells, p["rows"], p["cols"], fractions)
        write_cache(path, dataset)
    return dataset


def split_dataset(name: str, cells: Ratings, rows: int, cols: int, fractions):
    """Train/valid/test by ``fractions`` of cells already in random order."""
    cuts = np.cumsum([round(f * len(cells)) for f in fractions[:-1]])
    parts = np.split(np.arange(len(cells)), cuts)
    splits = {s: cells.take(ix) for s, f, ix in zip(("train", "valid", "test"), fractions,
                                                    parts) if s == "train" or f > 0}
    return make_dataset(name, np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64),
                        splits)


def write_text(path: str | os.PathLike, ratings: Ratings) -> None:
    """``user<TAB>item<TAB>rating`` lines (for tools that read text, such as Surprise)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for s in range(0, len(ratings), _CHUNK):
            block = np.column_stack([ratings.users[s:s + _CHUNK], ratings.items[s:s + _CHUNK]])
            lines = [f"{u}\t{i}\t{r:.4f}\n" for (u, i), r in
                     zip(block.tolist(), ratings.ratings[s:s + _CHUNK].tolist())]
            f.write("".join(lines))
    os.replace(tmp, path)
