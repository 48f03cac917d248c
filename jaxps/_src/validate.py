"""Input checks at the library's edge. Each error names the table and an offending key."""

from __future__ import annotations

import numpy as np

from . import uniq
from .errors import InputError
from .tables import TableSpec


def keys(name: str, spec: TableSpec, raw, what: str = "keys") -> np.ndarray:
    """``raw`` as int64 [n], or InputError naming the table and an offending key."""
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise InputError(f"table {name!r}: {what} must be a 1-D integer array, got shape "
                         f"{arr.shape}; pass e.g. np.asarray(keys).ravel()")
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"table {name!r}: {what} must be integers, got dtype {arr.dtype} "
                         f"(first key {arr[0]!r}); convert with keys.astype(np.int64)")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise InputError(f"table {name!r}: key {arr.max()} exceeds int64")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0 or arr.max() >= spec.num_keys:
        bad = int(np.flatnonzero((arr < 0) | (arr >= spec.num_keys))[0])
        raise InputError(f"table {name!r}: key {arr[bad]} at position {bad} is out of range "
                         f"[0, {spec.num_keys}); keys must be integers in [0, num_keys)")
    return arr


def rows(name: str, spec: TableSpec, raw, keys_: np.ndarray, what: str, *,
         check_finite: bool) -> np.ndarray:
    """``raw`` as float32 [len(keys), width], or InputError (shape, dtype, NaN/Inf)."""
    arr = np.asarray(raw)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"table {name!r}: {what} must be floating point, got dtype {arr.dtype}")
    want = (len(keys_), spec.width)
    if arr.shape != want:
        raise InputError(f"table {name!r}: {what} must have shape (len(keys), dim + state_dim) "
                         f"= {want}, got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    # The sum is NaN/Inf if any entry is (or, rarely, on overflow: then the exact check
    # below runs and finds nothing), at a fraction of the cost of an elementwise mask.
    if check_finite and arr.size and not np.isfinite(arr.sum()) \
            and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InputError(f"table {name!r}: {what} for key {keys_[bad]} (position {bad}) "
                         f"contains NaN or Inf; nothing was applied. Fix the computation, or "
                         f"pass check_finite=False to ParameterServer to allow it")
    return arr


def unique_keys(name: str, keys_: np.ndarray, what: str) -> None:
    """InputError if ``keys_`` has duplicates (``set`` with duplicates is ambiguous)."""
    if len(keys_) > 1:
        s = np.sort(keys_)
        dup = np.flatnonzero(s[1:] == s[:-1])
        if len(dup):
            raise InputError(f"table {name!r}: {what} has duplicate key {s[dup[0]]}; "
                             f"set() needs unique keys (which value should win?)")


def clock_range(start, end) -> tuple[int, int]:
    """Validated intent clocks [start, end)."""
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise InputError(f"intent start must be a clock (int >= 0), got {start!r}")
    end = start + 1 if end is None else end
    if not isinstance(end, (int, np.integer)) or end <= start:
        raise InputError(f"intent end must be an int > start={start}, got {end!r}")
    return int(start), int(end)


def unique(keys: np.ndarray) -> np.ndarray:
    """Sorted unique keys; O(n) when they are already (the trainer's batches are)."""
    if len(keys) < 2 or (keys[1:] > keys[:-1]).all():
        return keys
    return uniq.unique(keys)


def sum_duplicates(keys: np.ndarray, rows: np.ndarray):
    """(unique keys, summed rows). Sorting int keys is cheap; the sum runs only if needed."""
    if len(keys) < 2 or (keys[1:] > keys[:-1]).all():  # sorted unique: the trainer's case
        return keys, rows
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.empty(len(sk), bool)
    first[0] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    if first.all():
        return keys, rows
    starts = np.flatnonzero(first)
    return sk[starts], np.add.reduceat(rows[order], starts, axis=0)
