"""RMSE and MAE of a split, computed over all ranks, identical on 1 and N ranks.

Each rank takes a contiguous slice of the split, pulls the rows it needs from the PS and
computes the per-rating errors in float64 (predictions clipped to the rating range). The
errors are gathered in split order and summed in that order on every rank, so the figures
do not depend on the number of ranks (a sum of per-rank partial sums would, in the last
bits).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from train.mf.data import Ratings

_CHUNK = 1 << 16


def errors(user_rows: np.ndarray, item_rows: np.ndarray, ratings: np.ndarray, mean: float,
           rating_range: tuple[float, float]) -> np.ndarray:
    """float64 [n] prediction errors ``clip(r_hat) - r`` (the numpy twin of models.mf.predict).

    Args:
      user_rows, item_rows: [n, dim + 1] rows ``[factors | bias]`` (parameter columns only).
    """
    u, i = user_rows.astype(np.float64), item_rows.astype(np.float64)
    pred = mean + u[:, -1] + i[:, -1] + (u[:, :-1] * i[:, :-1]).sum(axis=1)
    return np.clip(pred, *rating_range) - ratings.astype(np.float64)


def _pull(ps, table: str, keys: np.ndarray, width: int) -> np.ndarray:
    uniq, inverse = np.unique(keys, return_inverse=True)
    return ps.pull(table, uniq)[:, :width][inverse.ravel()]


def evaluate(ps, split: Ratings, *, mean: float, rating_range: tuple[float, float],
             width: int, comm: MPI.Comm) -> dict:
    """``{"rmse", "mae", "num_ratings"}`` of ``split``; collective over ``comm``.

    Preconditions: every rank's updates are visible (``ps.wait_sync()`` before). A PS
    barrier follows the pulls, so no rank trains on (or blocks in the MPI gather, where it
    could not serve its peers) while another still pulls the rows it evaluates.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    bounds = np.linspace(0, len(split), size + 1).astype(np.int64)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    parts = []
    for a in range(lo, hi, _CHUNK):
        b = min(a + _CHUNK, hi)
        parts.append(errors(_pull(ps, "user", split.users[a:b], width),
                            _pull(ps, "item", split.items[a:b], width),
                            split.ratings[a:b], mean, rating_range))
    mine = np.concatenate(parts) if parts else np.zeros(0, np.float64)
    # Every rank's pulls are answered before anyone blocks in MPI collectives (README).
    ps.barrier()
    counts = np.diff(bounds)
    everything = np.empty(len(split), np.float64)
    comm.Allgatherv(mine, [everything, counts, bounds[:-1], MPI.DOUBLE])
    n = max(len(everything), 1)
    return {"rmse": float(np.sqrt(np.sum(everything ** 2) / n)),
            "mae": float(np.sum(np.abs(everything)) / n), "num_ratings": int(len(split))}
