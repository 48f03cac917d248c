"""Sorted unique keys, fast for the PS's key arrays (hundreds to thousands of int64s).

numpy 2.x's ``np.unique(a)`` without return arguments costs ~37 us on 700 sorted keys on
the development machine, ~7x a sort and a neighbour comparison (5 us); with
``return_inverse`` a stable argsort does it in ~60% of the time. These run once or more
per batch and per acting clock, so they are written out here.
"""

from __future__ import annotations

import numpy as np


def unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` for a 1-D array: its distinct values, sorted."""
    s = np.sort(a)
    if len(s) < 2:
        return s
    first = np.empty(len(s), bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    return s[first]


def unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True)`` for a 1-D array: (sorted distinct values u,
    inverse i as intp) with ``u[i] == a``."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = np.empty(len(s), bool)
    first[:1] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    inverse = np.empty(len(a), np.intp)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse
