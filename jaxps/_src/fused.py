"""Several batches per jitted call (``steps_per_call``): the window and its scan.

Why: every call of the step costs the host a fixed amount of Python and numpy work besides
the model's arithmetic -- the dispatch, and with a PS a pull, a push and a tick of the PS
clock, whose per-clock work (acting on intents, sync rounds, drops, messages) does not
shrink with the batch. Running K consecutive batches in one call (a ``lax.scan`` of the
same step) pays that work once per K batches; on several ranks it also moves fewer rows
per example, since the K batches share keys (kge-zipf-small, K = 8: 6,900 distinct entity
rows instead of 8 x 1,158). Keras calls this ``steps_per_execution``.

A window holds K batches. Per table, its keys are the union of theirs (sorted), pulled
once into a slice of rows. The scan carries the window's deltas so far (zeros at the
start): each batch reads its rows as slice + deltas at its positions in the union, and
scatter-adds its own row deltas into the carry, so it sees the updates of the batches
before it in the window as a serial run would. The carry at the end, the sum of the K
batches' deltas over the union, is pushed once (no update is lost; other ranks' updates
reach this rank at window boundaries: the PS's clock ticks once per window). Carrying
deltas rather than updated rows leaves the pulled slice a read-only input, used in place.

A window with fewer batches (the end of a source, or a batch whose data shapes differ from
the window's) is filled with dummy steps -- no rows (every position out of range), the last
real batch's data, learning rate 0 -- which read zero rows and whose deltas the scatter
drops, so the scan keeps one length and compiles once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from . import uniq
from .pipeline import bucket_size

# Positions of padding rows: out of range of any slice (gathered as zeros, dropped by the
# scatter), distinct so that each batch's positions stay unique.
_PAD_BASE = 1 << 30

# A window's union is found with a bitmap over the table when the table has at most this
# many keys per key of the window (else by sorting): the bitmap's cost grows with the table.
_DENSE_FACTOR = 32


class Window(NamedTuple):
    """K consecutive batches, ready for one call.

    Attributes:
      keys: table -> unique int64 [U_t]: the union of the batches' keys (sorted, until
        ``reorder``).
      sizes: table -> padded slice size S_t >= U_t (the slice's rows from U_t on are never
        read or pushed).
      positions: table -> int32 [K, B_t]: each batch's keys as positions in ``keys[t]``,
        padded with out-of-range positions to the batch bucket B_t.
      data: the batches' data pytree, each leaf stacked to [K, ...].
      examples: examples per real batch (len = number of real batches <= K).
      lr_mask: float32 [K]: 1 for real batches, 0 for dummy ones.
    """

    keys: dict
    sizes: dict
    positions: dict
    data: Any
    examples: tuple
    lr_mask: np.ndarray


def signature(data) -> tuple:
    """What must agree for batches to share a window: the data's tree and leaf shapes."""
    leaves, tree = jax.tree_util.tree_flatten(data)
    return tree, tuple((np.shape(x), np.asarray(x).dtype.str) for x in leaves)


def group(prepared: Iterable, steps: int) -> Iterator[list]:
    """Consecutive items of ``prepared`` (each with ``.data``) in lists of at most
    ``steps``; a list ends early where the data's signature changes."""
    current, sig = [], None
    for item in prepared:
        s = signature(item.data)
        if current and (s != sig or len(current) == steps):
            yield current
            current = []
        if not current:
            sig = s
        current.append(item)
    if current:
        yield current


def union(parts: list, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """``(u, where)``: the sorted union u (int64) of key arrays ``parts`` (each sorted,
    unique, in [0, num_keys)) and the positions in u of their concatenation (int32).

    Where the table is not much larger than the keys (kge-zipf-small, 32 batches: 37,000
    keys of 29,534), a bitmap over the table and a lookup table replace the sort and the
    searches: 0.1 ms instead of 1.7 ms on the development machine, paid every window."""
    cat = np.concatenate(parts)
    if num_keys <= _DENSE_FACTOR * len(cat):
        seen = np.zeros(num_keys, bool)
        seen[cat] = True
        u = np.flatnonzero(seen).astype(np.int64, copy=False)
        lookup = np.empty(num_keys, np.int32)  # read only at the keys set just below
        lookup[u] = np.arange(len(u), dtype=np.int32)
        return u, lookup[cat]
    u = uniq.unique(cat)
    return u, np.searchsorted(u, cat).astype(np.int32)


def window(batches: list, steps: int, batch_sizes: Mapping[str, int],
           slice_floor: dict, num_keys: Mapping[str, int]) -> Window:
    """The window of ``batches`` (each with ``.keys``, ``.data``, ``.num_examples``; at most
    ``steps``), padded to ``steps`` batches.

    ``batch_sizes[t]``: the bucket each batch's positions are padded to (>= its keys).
    ``slice_floor[t]``: the smallest slice size; raised here to the union's bucket (so it
    only grows, and shapes settle early). ``num_keys[t]``: the table's key range (every
    key is in it: the trainer checked them).
    """
    keys, positions, sizes = {}, {}, {}
    for t, width in batch_sizes.items():
        parts = [b.keys[t] for b in batches]
        pos = np.empty((steps, width), np.int32)
        pos[:] = _PAD_BASE + np.arange(width, dtype=np.int32)
        if len(parts) > 1:
            u, where = union(parts, num_keys[t])
            start = 0
            for i, k in enumerate(parts):
                pos[i, :len(k)] = where[start:start + len(k)]
                start += len(k)
        else:  # one batch: its keys are the union
            u = parts[0]
            pos[0, :len(u)] = np.arange(len(u), dtype=np.int32)
        keys[t], positions[t] = u, pos
        sizes[t] = slice_floor[t] = max(slice_floor[t], bucket_size(len(u)))
    leaves = [b.data for b in batches]
    leaves += [batches[-1].data] * (steps - len(batches))
    data = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *leaves)
    mask = np.zeros(steps, np.float32)
    mask[:len(batches)] = 1.0
    return Window(keys, sizes, positions, data, tuple(b.num_examples for b in batches), mask)


# Positions are unique but not always sorted (the trainer may put a call's owned keys
# first: ``reorder``); XLA on the CPU ran these as fast without the sorted hint.
def gather(table: jax.Array, positions: jax.Array) -> jax.Array:
    """Rows at unique ``positions``; out-of-range ones read as zero rows."""
    return table.at[positions].get(mode="fill", fill_value=0.0, unique_indices=True)


def scatter_add(table: jax.Array, positions: jax.Array, rows: jax.Array) -> jax.Array:
    """``table`` with ``rows`` added at unique ``positions`` (out-of-range dropped)."""
    return table.at[positions].add(rows, mode="drop", unique_indices=True)


def reorder(w: Window, table: str, perm: np.ndarray) -> Window:
    """``w`` with the union of ``table`` in the order ``keys[perm]`` (a permutation), its
    positions following (padding positions unchanged): the same call, other row order."""
    keys = w.keys[table]
    where = np.empty(len(keys), np.int32)
    where[perm] = np.arange(len(keys), dtype=np.int32)
    pos = w.positions[table]
    real = pos < len(keys)
    moved = np.where(real, where[np.where(real, pos, 0)], pos)
    return w._replace(keys={**w.keys, table: keys[perm]},
                      positions={**w.positions, table: moved})


__all__ = ["Window", "gather", "group", "reorder", "scatter_add", "signature", "union",
           "window"]
