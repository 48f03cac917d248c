"""Access traces: which keys each rank's batches touch, clock by clock.

A trace is what `train.whatif` replays to estimate how each management technique would do on
another network and rank count. It holds no values, only key ids, so it is small and cheap
to record.

File format: one compressed ``.npz`` per rank, ``{path_prefix}.rank{rank}.npz``, with

  keys        int64 [total]      every recorded key, in recording order
  offsets     int64 [m + 1]      record j is keys[offsets[j]:offsets[j + 1]]
  clocks      int64 [m]          clock of record j
  table_ids   int32 [m]          index into table_names of record j
  table_names str   [T]          table names
  num_keys    int64 [T]          rows per table
  row_bytes   int64 [T]          bytes per row (parameter + optimizer state)
  rank        int64 []           the recording rank

Several records for the same (clock, table) are concatenated on load. Keys keep their
duplicates: the replay decides what "unique per batch" means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Trace", "TraceRecorder", "load_trace", "synthetic_trace", "trace_path"]

_RANK_FILE = re.compile(r"\.rank(\d+)\.npz$")


def trace_path(path_prefix: str | Path, rank: int) -> Path:
    """The file rank ``rank`` writes for ``path_prefix``."""
    return Path(f"{path_prefix}.rank{rank}.npz")


@dataclass(frozen=True)
class Trace:
    """The keys every rank touched, per clock and table.

    Attributes:
      tables: name -> (num_keys, row_bytes); row_bytes counts the parameter and its optimizer
        state, i.e. what a relocation or a pull moves per key.
      ranks: ranks[r][t] is a dict table -> int64 keys (duplicates allowed) that rank r's
        batch at clock t touched; a table absent from the dict was not touched.
    """
    tables: dict[str, tuple[int, int]]
    ranks: list[list[dict[str, np.ndarray]]]

    @property
    def num_ranks(self) -> int:
        return len(self.ranks)

    @property
    def num_clocks(self) -> int:
        return max((len(c) for c in self.ranks), default=0)

    def batches(self) -> list[dict[str, np.ndarray]]:
        """The global batch sequence: batch i = clock * num_ranks + rank (missing -> empty)."""
        out = []
        for t in range(self.num_clocks):
            for clocks in self.ranks:
                out.append(clocks[t] if t < len(clocks) else {})
        return out


class TraceRecorder:
    """Records one rank's accesses; `close` writes ``{path_prefix}.rank{rank}.npz``.

    ``record`` only appends references to arrays (no per-key Python work); the copy into one
    array happens at `close`. Not thread-safe: call from the training thread.

    Args:
      path_prefix: file prefix shared by all ranks of the run.
      rank: this process's rank.
      tables: name -> (num_keys, row_bytes).
    """

    def __init__(self, path_prefix: str | Path, rank: int, *,
                 tables: dict[str, tuple[int, int]]):
        if not tables:
            raise ValueError("TraceRecorder needs tables={name: (num_keys, row_bytes)}")
        for name, (n, b) in tables.items():
            if int(n) <= 0 or int(b) <= 0:
                raise ValueError(f"table {name!r}: num_keys and row_bytes must be > 0, got {(n, b)}")
        self.path = trace_path(path_prefix, rank)
        self.rank = int(rank)
        self.tables = {k: (int(n), int(b)) for k, (n, b) in tables.items()}
        self._ids = {name: i for i, name in enumerate(self.tables)}
        self._keys: list[np.ndarray] = []
        self._clocks: list[int] = []
        self._tids: list[int] = []
        self._closed = False

    def record(self, clock: int, table: str, keys: np.ndarray) -> None:
        """Note that this rank's batch at ``clock`` touches ``keys`` of ``table``."""
        if self._closed:
            raise RuntimeError(f"TraceRecorder for {self.path} is closed")
        if table not in self._ids:
            raise ValueError(f"unknown table {table!r}; the recorder knows {list(self._ids)}")
        keys = np.asarray(keys)
        if keys.size and not np.issubdtype(keys.dtype, np.integer):
            raise ValueError(f"table {table!r}: keys must be integers, got dtype {keys.dtype}")
        keys = keys.astype(np.int64, copy=True).ravel()
        n = self.tables[table][0]
        if keys.size and (keys.min() < 0 or keys.max() >= n):
            bad = keys[(keys < 0) | (keys >= n)][0]
            raise ValueError(f"table {table!r}: key {bad} outside [0, {n})")
        if int(clock) < 0:
            raise ValueError(f"clock must be >= 0, got {clock}")
        self._keys.append(keys)
        self._clocks.append(int(clock))
        self._tids.append(self._ids[table])

    def close(self) -> Path:
        """Write the file (once) and return its path."""
        if self._closed:
            return self.path
        self._closed = True
        lengths = np.array([len(k) for k in self._keys], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            self.path, keys=keys, offsets=offsets,
            clocks=np.array(self._clocks, np.int64), table_ids=np.array(self._tids, np.int32),
            table_names=np.array(list(self.tables)),
            num_keys=np.array([v[0] for v in self.tables.values()], np.int64),
            row_bytes=np.array([v[1] for v in self.tables.values()], np.int64),
            rank=np.int64(self.rank))
        self._keys.clear()
        return self.path

    def __enter__(self) -> "TraceRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_rank(path: Path) -> tuple[dict[str, tuple[int, int]], list[dict[str, np.ndarray]]]:
    with np.load(path, allow_pickle=False) as z:
        names = [str(s) for s in z["table_names"]]
        tables = {n: (int(k), int(b)) for n, k, b in zip(names, z["num_keys"], z["row_bytes"])}
        keys, offsets, clocks, tids = z["keys"], z["offsets"], z["clocks"], z["table_ids"]
    num_clocks = int(clocks.max()) + 1 if clocks.size else 0
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in range(num_clocks)]
    for j in range(len(clocks)):
        parts[clocks[j]].setdefault(names[tids[j]], []).append(keys[offsets[j]:offsets[j + 1]])
    return tables, [{t: np.concatenate(v) for t, v in d.items()} for d in parts]


def load_trace(path_prefix: str | Path) -> Trace:
    """Read every rank's file of ``path_prefix`` (ranks 0..R-1, all present)."""
    prefix = Path(path_prefix)
    files = {}
    for f in prefix.parent.glob(prefix.name + ".rank*.npz"):
        m = _RANK_FILE.search(f.name)
        if m and f.name[:m.start()] == prefix.name:
            files[int(m.group(1))] = f
    if not files:
        raise FileNotFoundError(f"no trace files {prefix}.rank<R>.npz found")
    if sorted(files) != list(range(len(files))):
        raise ValueError(f"trace {prefix}: ranks {sorted(files)} found, expected 0..{len(files) - 1}")
    tables, ranks = None, []
    for r in range(len(files)):
        t, clocks = _load_rank(files[r])
        if tables is not None and t != tables:
            raise ValueError(f"{files[r]}: tables {t} differ from rank 0's {tables}")
        tables = t
        ranks.append(clocks)
    return Trace(tables=tables, ranks=ranks)


def synthetic_trace(num_ranks: int, clocks: int, num_keys: int, batch: int, zipf: float = 1.1,
                    private_fraction: float = 0.5, seed: int = 0, *, row_bytes: int = 512,
                    table: str = "emb") -> Trace:
    """A skewed trace like `train.demo`'s: a shared Zipf set plus one private block per rank.

    The first half of the keys is shared: key k is drawn with probability proportional to
    (k + 1) ** -zipf (so low ids are hot). The second half is cut into one contiguous
    block per rank, drawn uniformly. Each batch has round(batch * private_fraction) private
    keys and the rest shared (duplicates allowed).

    Returns:
      A `Trace` with one table ``table`` of ``num_keys`` rows of ``row_bytes``.
    """
    if num_ranks < 1 or clocks < 0 or batch < 0 or not 0 <= private_fraction <= 1:
        raise ValueError("need num_ranks >= 1, clocks >= 0, batch >= 0, 0 <= private_fraction <= 1")
    shared_n = num_keys // 2
    block = (num_keys - shared_n) // num_ranks
    if (private_fraction > 0 and block < 1) or (private_fraction < 1 and shared_n < 1):
        raise ValueError(f"num_keys={num_keys} too small for {num_ranks} private blocks")
    n_priv = int(round(batch * private_fraction))
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, shared_n + 1, dtype=np.float64) ** -zipf) if shared_n else None
    ranks = []
    for r in range(num_ranks):
        lo = shared_n + r * block
        shared = (np.searchsorted(cdf, rng.random((clocks, batch - n_priv)) * cdf[-1])
                  if batch - n_priv else np.zeros((clocks, 0), np.int64))
        priv = lo + rng.integers(0, max(block, 1), (clocks, n_priv))
        keys = np.concatenate([shared.astype(np.int64), priv.astype(np.int64)], axis=1)
        ranks.append([{table: keys[t]} for t in range(clocks)])
    return Trace(tables={table: (num_keys, row_bytes)}, ranks=ranks)


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(
        prog="python -m train.trace",
        description="A library module, not a program: TraceRecorder records the keys each "
                    "batch touches, load_trace reads them, synthetic_trace makes one; "
                    "replay them with `python -m train.whatif` (docs/whatif.md).").parse_args()
