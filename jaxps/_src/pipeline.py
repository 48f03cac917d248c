"""The batch pipeline shared by SparseTrainer and DenseTrainer.

A batch source yields ``Batch(keys, data)``: per table the sorted unique keys the batch
touches, and data that refers to rows by position. A background thread (``Prefetcher``)
reads the source, checks each batch once (``read_batch``) and prepares it for the step
(the trainer's ``prepare``: padding, validation against the tables), ahead of the
training thread; the jitted step releases the GIL, so the two overlap. Unique-key counts
are padded to a few bucket sizes (``bucket_size``) so a step compiles once per size.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from . import uniq
from .errors import InputError


class Batch(NamedTuple):
    """One batch of a batch source.

    Attributes:
      keys: table -> unique int64 keys [U_t] the batch touches.
      data: a pytree of numpy arrays; it refers to rows by position (int32 indices into
        ``keys[table]``). Keep its shapes fixed across batches (pad the last batch) so the
        step does not recompile.
      num_examples: examples in the batch, for examples/s; default: the leading dimension
        of the first leaf of ``data``.
    """

    keys: Mapping[str, np.ndarray]
    data: Any
    num_examples: int | None = None


def index_batch(ids: Mapping[str, np.ndarray | Sequence[np.ndarray]]):
    """Raw ids per table -> (unique keys per table, int32 positions with the ids' structure).

    Args:
      ids: table -> an int array of ids (any shape), or a sequence of such arrays (e.g.
        heads, tails and negatives all from the entity table).

    Returns:
      ``(keys, positions)``: ``keys[t]`` sorted unique int64; ``positions[t]`` int32 arrays
      shaped like the input (a list when a sequence was given) with
      ``keys[t][positions[t]] == ids[t]``.
    """
    keys, positions = {}, {}
    for table, raw in ids.items():
        parts = [np.asarray(raw)] if isinstance(raw, np.ndarray) else [np.asarray(a) for a in raw]
        for a in parts:
            if a.dtype.kind not in "iu":
                raise InputError(f"index_batch: ids of table {table!r} must be integers, got "
                                 f"dtype {a.dtype}; convert with .astype(np.int64)")
        flat = np.concatenate([a.ravel() for a in parts]) if parts else np.zeros(0, np.int64)
        distinct, inverse = uniq.unique_inverse(flat.astype(np.int64, copy=False))
        inverse = inverse.astype(np.int32)
        split = np.split(inverse, np.cumsum([a.size for a in parts])[:-1])
        out = [s.reshape(a.shape) for s, a in zip(split, parts)]
        keys[table] = distinct
        positions[table] = out[0] if isinstance(raw, np.ndarray) else out
    return keys, positions


def bucket_size(n: int, *, min_size: int = 64) -> int:
    """Padded size for ``n`` unique keys: the smallest of min_size * {1, 1.5} * 2**k >= n.

    Two sizes per power of two: at most a third of the rows are padding, and the sizes
    a run meets are few, so each is compiled once.
    """
    base = min_size
    while True:
        if n <= base:
            return base
        if n <= base + base // 2:
            return base + base // 2
        base *= 2


def read_batch(item, tables: Iterable[str]) -> tuple[dict, Any, int]:
    """``(keys, data, num_examples)`` of a batch as a source yields it (``Batch`` or a
    ``(keys, data[, n])`` tuple), checked: every trained table has 1-D int keys without
    duplicates; data leaves become numpy arrays; n defaults to the data's leading size."""
    if isinstance(item, Batch):
        keys, data, n = item
    elif isinstance(item, tuple) and len(item) in (2, 3):
        keys, data, n = (*item, None) if len(item) == 2 else item
    else:
        raise InputError("a batch source must yield (keys, data) or jaxps.Batch, got "
                         f"{type(item).__name__}")
    out = {}
    for table in tables:
        if table not in keys:
            raise InputError(f"batch has no keys for table {table!r}; give every trained "
                             f"table's keys (possibly empty), got {sorted(keys)}")
        k = np.asarray(keys[table])
        if k.ndim != 1 or k.dtype.kind not in "iu":
            raise InputError(f"batch keys of table {table!r} must be a 1-D int array, got "
                             f"{k.dtype} {k.shape}; build them with jaxps.index_batch")
        if len(k) > 1 and not (k[1:] > k[:-1]).all() and len(uniq.unique(k)) != len(k):
            raise InputError(f"batch keys of table {table!r} have duplicates; a batch "
                             f"lists each key once (build them with jaxps.index_batch)")
        out[table] = k
    data = jax.tree_util.tree_map(np.asarray, data)
    if n is None:
        leaves = jax.tree_util.tree_leaves(data)
        n = len(leaves[0]) if leaves and np.ndim(leaves[0]) else 1
    return out, data, int(n)


_DONE = object()


class Prefetcher:
    """``prepare(item)`` of every batch of ``batches``, made by a background thread up to
    ``size`` ahead. ``get()`` returns the next prepared batch, None at the end, and raises
    what the source or ``prepare`` raised. Use as a context manager: leaving it stops and
    joins the thread (also when the training thread fails mid-epoch).

    The producer, once the buffer is full, sleeps until the training thread has taken half
    of it (not until it takes one): one wake-up per ``size // 2`` batches instead of one per
    batch (``queue.Queue`` woke it at every get; py-spy: ~5% of the training thread's time
    in that notify, on 2 ranks with lookahead 8)."""

    def __init__(self, batches: Iterable, prepare: Callable, size: int, name: str):
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._size = max(1, size)
        self._low = self._size // 2
        self._stopped = False
        self._producer_waits = self._consumer_waits = False
        self._thread = threading.Thread(target=self._produce, args=(batches, prepare),
                                        name=name, daemon=True)

    def __enter__(self) -> "Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def get(self):
        with self._cond:
            while not self._items:
                self._consumer_waits = True
                self._cond.wait()
                self._consumer_waits = False
            item = self._items[0]
            if item is not _DONE:  # the end stays, for later calls
                self._items.popleft()
            if self._producer_waits and len(self._items) <= self._low:
                self._cond.notify()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def _put(self, x) -> bool:
        with self._cond:
            while len(self._items) >= self._size and not self._stopped:
                self._producer_waits = True
                self._cond.wait()
                self._producer_waits = False
            if self._stopped:  # the training thread stopped taking
                return False
            self._items.append(x)
            if self._consumer_waits:
                self._cond.notify()
        return True

    def _produce(self, batches: Iterable, prepare: Callable) -> None:
        try:
            for item in batches:
                if not self._put(prepare(item)):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the training thread, which re-raises it
            self._put(e)
