"""Loading a sharded checkpoint (``checkpoint.py`` writes them; the format is described
there): on any rank count and technique, each rank keeping the rows whose home it is,
every byte verified against the manifest's checksums on the way."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .checkpoint import CHUNK_BYTES, CheckpointError, previous_note, read_manifest
from .errors import InputError


def load_checkpoint(ps, path, *, comm: MPI.Comm | None = None) -> dict:
    """Collective: set every row of ``ps`` from checkpoint folder ``path``; returns its manifest.

    Works for any rank count and technique (the checkpoint's may differ). Precondition: no
    key has moved since the PS was built (call it right after construction), so that each
    rank's ``set`` of the keys whose home it is stays local; otherwise it is still correct,
    only slower. Raises CheckpointError on every rank when a shard is missing, truncated or
    fails its checksum, or the tables differ; the message names the shard and the previous
    checkpoint. After an error the PS holds a mix of rows: load another checkpoint.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    path = Path(path)
    ps.barrier()
    error = None
    manifest = None
    try:
        manifest = read_manifest(path)
        _check_tables(manifest, ps, path)
        n_shards = len(manifest["shards"])
        for i, shard in enumerate(manifest["shards"]):
            for table in sorted(ps.tables):
                _load_shard_table(ps, table, path, shard[table], i, n_shards, rank, size)
    except CheckpointError as e:
        error = str(e)
    except InputError as e:  # e.g. NaN rows: only a damaged or diverged checkpoint has them
        error = f"checkpoint {path}: {e}{previous_note(path)}"
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise CheckpointError(errors[0])
    ps.wait_sync()  # replicas of the new rows everywhere before anyone reads them
    return manifest


def _check_tables(manifest: dict, ps, path: Path) -> None:
    have = manifest.get("tables", {})
    want = {t: {"num_keys": s.num_keys, "width": s.width} for t, s in ps.tables.items()}
    diffs = []
    for t in sorted(set(have) | set(want)):
        if t not in have or t not in want:
            diffs.append(f"table {t!r} only in the {'checkpoint' if t in have else 'PS'}")
            continue
        for k in ("num_keys", "width"):
            if have[t].get(k) != want[t][k]:
                diffs.append(f"table {t!r} {k}: checkpoint {have[t].get(k)}, PS {want[t][k]}")
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not fit this ParameterServer: "
                              + "; ".join(diffs))


def _load_shard_table(ps, table: str, path: Path, files: dict, index: int, n_shards: int,
                      rank: int, size: int) -> None:
    """Stream one shard's keys and rows, verify them, set the keys whose home is ``rank``."""
    where = f"checkpoint shard {index + 1} of {n_shards} (table {table!r})"
    width = ps.tables[table].width
    keys_file, rows_file = (path / files["keys"]["file"]), (path / files["rows"]["file"])
    count = files["count"]
    with _Reader(keys_file, files["keys"], where, np.int64, (count,)) as kr, \
            _Reader(rows_file, files["rows"], where, np.float32, (count, width)) as rr:
        chunk = max(1, CHUNK_BYTES // (4 * width))
        bad = None  # rows the PS refused (NaN/Inf): first see whether the file is damaged
        for a in range(0, count, chunk):
            n = min(chunk, count - a)
            keys, rows = kr.read(n), rr.read(n)
            if len(keys) and (keys.min() < 0 or keys.max() >= ps.tables[table].num_keys):
                raise CheckpointError(f"{where}: {keys_file} has keys outside "
                                      f"[0, {ps.tables[table].num_keys}){previous_note(path)}")
            mine = keys % size == rank
            if mine.any():
                try:
                    ps.set(table, keys[mine], rows[mine])
                except InputError as e:
                    bad = bad or e
        kr.finish()
        rr.finish()  # a flipped bit that made a NaN is reported as the checksum mismatch
        if bad is not None:  # intact file, non-finite rows: a diverged run saved them
            raise CheckpointError(f"{where}: {rows_file}: {bad}{previous_note(path)}")


class _Reader:
    """Reads an .npy in chunks, hashing every byte; ``finish`` checks size and sha256."""

    def __init__(self, file: Path, info: dict, where: str, dtype, shape):
        self.file, self.info, self.where = file, info, where
        self.dtype, self.shape = np.dtype(dtype), shape
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def _fail(self, reason: str):
        return CheckpointError(f"{self.where}: {self.file}: {reason}"
                               f"{previous_note(self.file.parent)}")

    def __enter__(self):
        try:
            self.f = open(self.file, "rb")
        except FileNotFoundError:
            raise self._fail("missing") from None
        except OSError as e:
            raise self._fail(f"unreadable ({e})") from e
        self.digest = hashlib.sha256()
        try:
            version = np.lib.format.read_magic(self.f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(self.f)
        except (ValueError, OSError, EOFError) as e:
            raise self._fail(f"not a valid .npy file ({e})") from e
        if tuple(shape) != tuple(self.shape) or dtype != self.dtype or fortran:
            raise self._fail(f"holds {dtype} {tuple(shape)}, the manifest says "
                             f"{self.dtype} {tuple(self.shape)}")
        end = self.f.tell()
        self.f.seek(0)
        self.digest.update(self.f.read(end))
        return self

    def read(self, n: int) -> np.ndarray:
        data = self.f.read(n * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise self._fail(f"truncated (file of {self.file.stat().st_size} bytes, the "
                             f"manifest says {self.info['bytes']})")
        self.digest.update(data)
        return np.frombuffer(data, self.dtype).reshape((n, *self.shape[1:]))

    def finish(self) -> None:
        if self.f.read(1):
            raise self._fail("longer than its array (trailing bytes)")
        if self.digest.hexdigest() != self.info["sha256"]:
            raise self._fail("checksum mismatch (the file changed after it was written)")

    def __exit__(self, *exc):
        self.f.close()
