"""Relation types 1-1, 1-N, N-1, N-N, for the per-type metrics of the evaluation.

The classification of Bordes et al. 2013 (TransE, "Translating Embeddings for Modeling
Multi-relational Data", section 4.2), as LibKGE computes it (kge/indexing.py,
``_get_relation_types``), from the training triples only:

    tails per head  tph(p) = #distinct (s, p, o) / #distinct (s, p)   (average over heads)
    heads per tail  hpt(p) = #distinct (s, p, o) / #distinct (p, o)   (average over tails)
    type(p) = ("N" if hpt > 1.5 else "1") + "-" + ("N" if tph > 1.5 else "1")

so a 1-N relation (one head, many tails: "has_part") has hard tail queries and easy head
queries. LibKGE names the head side "M" (M-1, M-N); the threshold is strict as there (an
average of exactly 1.5 counts as "1"). A relation without training triples has no average and
is typed "none".
"""

from __future__ import annotations

import numpy as np

TYPES = ("1-1", "1-N", "N-1", "N-N")
THRESHOLD = 1.5


def type_averages(train: np.ndarray, num_relations: int) -> tuple[np.ndarray, np.ndarray]:
    """(tails per head, heads per tail), float64 [num_relations] each; NaN where a relation
    has no training triple. Vectorized: one ``np.unique`` per key kind."""
    t = np.unique(np.asarray(train, np.int64), axis=0)
    s, p, o = t.T
    width = int(max(s.max(initial=0), o.max(initial=0))) + 1  # key = p * width + entity
    n = np.bincount(p, minlength=num_relations).astype(np.float64)
    sp = np.bincount(np.unique(p * width + s) // width, minlength=num_relations)
    po = np.bincount(np.unique(p * width + o) // width, minlength=num_relations)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, n / sp, np.nan), np.where(n > 0, n / po, np.nan)


def relation_types(train: np.ndarray, num_relations: int) -> np.ndarray:
    """str [num_relations]: "1-1", "1-N", "N-1", "N-N", or "none" (no training triple)."""
    tph, hpt = type_averages(train, num_relations)
    head = np.where(hpt > THRESHOLD, "N", "1")
    tail = np.where(tph > THRESHOLD, "N", "1")
    kinds = np.char.add(np.char.add(head, "-"), tail).astype(object)
    kinds[np.isnan(tph)] = "none"
    return kinds


def type_counts(types: np.ndarray) -> dict[str, int]:
    """Relations per type, in the order of TYPES ("none" last, only when present)."""
    counts = {k: int(np.count_nonzero(types == k)) for k in TYPES}
    if (none := int(np.count_nonzero(types == "none"))):
        counts["none"] = none
    return counts
