"""Sharded, consistent checkpoints of a ParameterServer: every rank writes the rows it owns.

Layout of one checkpoint (a folder ``<root>/step-<step>``)::

    manifest.json                  format, tables, shards, step, technique, ranks, meta
    <table>.<rank>.keys.npy        int64 [n]: the keys rank <rank> owned, sorted
    <table>.<rank>.rows.npy        float32 [n, width]: their rows (parameter + optimizer state)

Why sharded: a model larger than one process's memory is the reason to use a PS, so no rank
may gather a table. Save: after ``ps.wait_sync()`` nothing is in flight and every owner's row
holds every update; each rank streams its owned rows (a local pull) into its own files, in
chunks, hashing them as it writes. Rank 0 writes the manifest (sha256 and size of every file)
once all shards are on disk. Everything goes to a temporary folder that is fsynced and then
renamed, so a checkpoint folder either has a manifest and all its shards or does not exist;
a failed save removes its temporary files on every rank.

Load, on any rank count and technique: right after the PS is built every key sits at its home
``k % size``, so rank r reads, from every shard, only the rows whose home it is and sets
them (a local write). The files are read in chunks (``_CHUNK_BYTES``) and verified against
the manifest's checksums on the way, so memory per rank stays about the size of its share
of the rows (which the PS holds anyway) plus one chunk.

Precondition for both: collective over ``comm``, the communicator the PS was built on, called
by every rank at the same point with no PS operation of this rank in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .errors import InputError

FORMAT = "jaxps-checkpoint"
FORMAT_VERSION = 1
_CHUNK_BYTES = 8 << 20  # rows per read/write chunk: bounds the memory a save/load adds


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or used: the message says which file and why."""


# ----- save ------------------------------------------------------------------------------------
def save_checkpoint(ps, root, *, step: int, meta: dict | None = None, keep: int | None = None,
                    comm: MPI.Comm | None = None) -> Path:
    """Collective: write a checkpoint of every table of ``ps`` to ``root/step-<step>``.

    Args:
      ps: the ParameterServer.
      root: folder holding the checkpoints; shared by all ranks (each writes its own files).
      step: a number that orders checkpoints (e.g. batches trained so far).
      meta: JSON-serializable dict stored in the manifest (epoch, RNG/data-order state, the
        run's config, ...); returned by ``load_checkpoint``.
      keep: afterwards delete all but the newest ``keep`` complete checkpoints (None: keep all).
      comm: the communicator the PS was built on (default COMM_WORLD).

    Returns: the checkpoint folder. Raises CheckpointError on every rank if any rank failed
    (disk full, unwritable, a folder not shared by all ranks); nothing is left behind then.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    root = Path(root)
    final = root / f"step-{int(step):012d}"
    ps.wait_sync()  # every update applied at its owner; no PS operation in flight
    tmp_name = comm.bcast(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}" if rank == 0 else None)
    tmp = root / tmp_name
    error, shard = None, None
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        shard = {t: _write_table_shard(ps, t, tmp, rank) for t in sorted(ps.tables)}
    except OSError as e:
        error = f"rank {rank} could not write its shard in {tmp}: {e}"
    shards = comm.allgather((error, shard))
    errors = [e for e, _ in shards if e]
    if not errors and rank == 0:
        try:
            _finish(ps, root, tmp, final, [s for _, s in shards], step, meta, size)
        except (OSError, CheckpointError, TypeError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    errors = comm.bcast(errors if rank == 0 else None)
    if errors:
        if shard is not None:  # own files (a folder not shared: rank 0 cannot see them)
            for files in shard.values():
                for f in ("keys", "rows"):
                    (tmp / files[f]["file"]).unlink(missing_ok=True)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        comm.Barrier()
        try:
            tmp.rmdir()  # a folder of this rank's own (not shared with rank 0), now empty
        except OSError:
            pass
        raise CheckpointError(f"checkpoint {final} not written: " + "; ".join(errors))
    if rank == 0 and keep is not None:
        for old in list_checkpoints(root)[:-max(int(keep), 1)]:
            shutil.rmtree(old, ignore_errors=True)
    comm.Barrier()
    if rank != 0 and tmp.exists():  # output folders not shared: drop the local leftovers
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_table_shard(ps, table: str, folder: Path, rank: int) -> dict:
    keys = ps.owned_keys(table)
    width = ps.tables[table].width
    base = f"{table}.{rank:05d}"
    out = {"count": int(len(keys))}
    out["keys"] = _write_npy(folder / f"{base}.keys.npy", np.dtype(np.int64), (len(keys),),
                             [keys])
    chunk = max(1, _CHUNK_BYTES // (4 * width))
    # Owned keys: each pull is a local copy of one chunk of rows.
    rows = (ps.pull(table, keys[a:a + chunk]) for a in range(0, len(keys), chunk))
    out["rows"] = _write_npy(folder / f"{base}.rows.npy", np.dtype(np.float32),
                             (len(keys), width), rows)
    return out


def _write_npy(path: Path, dtype: np.dtype, shape: tuple, parts) -> dict:
    """Write an .npy from an iterable of C-ordered parts; fsynced; returns file, bytes, sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        header = _HashingWriter(f, digest)
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": shape})
        for part in parts:
            header.write(np.ascontiguousarray(part, dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
        nbytes = f.tell()
    return {"file": path.name, "bytes": nbytes, "sha256": digest.hexdigest()}


class _HashingWriter:
    def __init__(self, f, digest):
        self._f, self._digest = f, digest

    def write(self, data) -> int:
        self._digest.update(data)
        return self._f.write(data)


def _finish(ps, root: Path, tmp: Path, final: Path, shards: list, step, meta, size) -> None:
    """Rank 0: check every shard is visible here, write the manifest, rename into place."""
    for rank, shard in enumerate(shards):
        for table, files in shard.items():
            for f in ("keys", "rows"):
                if not (tmp / files[f]["file"]).is_file():
                    raise CheckpointError(
                        f"rank {rank}'s file {files[f]['file']} is not visible to rank 0 in "
                        f"{tmp}: the checkpoint folder must be on a file system shared by "
                        "all ranks")
    for table, spec in ps.tables.items():
        total = sum(s[table]["count"] for s in shards)
        if total != spec.num_keys:
            raise CheckpointError(f"table {table!r}: the ranks own {total} keys in all, "
                                  f"expected {spec.num_keys} (a key in flight?)")
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "step": int(step), "ranks": size,
        "technique": ps.technique, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tables": {t: {"num_keys": s.num_keys, "dim": s.dim, "state_dim": s.state_dim,
                       "width": s.width} for t, s in sorted(ps.tables.items())},
        "shards": shards, "meta": meta or {}}
    text = json.dumps(manifest, indent=1)
    with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # the same step written again: replace it
        old = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----- find ------------------------------------------------------------------------------------
def list_checkpoints(root) -> list[Path]:
    """The complete checkpoints under ``root`` (with a manifest), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "manifest.json").is_file())


def read_manifest(path) -> dict:
    """The manifest of checkpoint folder ``path``; CheckpointError if missing or foreign."""
    path = Path(path)
    file = path / "manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint (no manifest.json){_previous(path)}") \
            from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint manifest {file} is unreadable ({e}){_previous(path)}") \
            from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a jaxps checkpoint manifest{_previous(path)}")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format version {manifest.get('version')}, "
                              f"this jaxps reads version {FORMAT_VERSION}")
    return manifest


def _previous(path: Path) -> str:
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    return f"; the previous checkpoint is at {older[-1]}" if older else ""


# ----- load ------------------------------------------------------------------------------------
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
        error = f"checkpoint {path}: {e}{_previous(path)}"
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
        chunk = max(1, _CHUNK_BYTES // (4 * width))
        for a in range(0, count, chunk):
            n = min(chunk, count - a)
            keys, rows = kr.read(n), rr.read(n)
            if len(keys) and (keys.min() < 0 or keys.max() >= ps.tables[table].num_keys):
                raise CheckpointError(f"{where}: {keys_file} has keys outside "
                                      f"[0, {ps.tables[table].num_keys}){_previous(path)}")
            mine = keys % size == rank
            if mine.any():
                ps.set(table, keys[mine], rows[mine])
        kr.finish()
        rr.finish()


class _Reader:
    """Reads an .npy in chunks, hashing every byte; ``finish`` checks size and sha256."""

    def __init__(self, file: Path, info: dict, where: str, dtype, shape):
        self.file, self.info, self.where = file, info, where
        self.dtype, self.shape = np.dtype(dtype), shape
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def _fail(self, reason: str):
        return CheckpointError(f"{self.where}: {self.file}: {reason}"
                               f"{_previous(self.file.parent)}")

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
