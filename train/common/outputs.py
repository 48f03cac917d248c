"""The run's output folder: checked before training, every file written atomically.

Atomic = written under a temporary name in the same folder, flushed and fsynced, then renamed
over the final name: a reader (or a resumed run) sees the old file or the new one, never a
truncated one, and a failed write (disk full) removes its temporary file instead of leaving it
to keep the disk full.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np


class OutputError(OSError):
    """The output folder cannot take this run's files; the message says why and what to do."""


def check_out_dir(out: Path, need_bytes: int, *, create: bool = True) -> None:
    """Create ``out`` if needed and check that it is a writable folder with ``need_bytes`` free.

    Raises OutputError naming the folder: an existing file in the way, no permission, a
    read-only file system, or too little space (with the sizes in MiB). ``create=False``
    writes nothing: only the checks that need no folder (a file in the way, a read-only
    parent), for a run that must not touch ``out`` before its data was read.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is an existing file, not a folder; pass a folder "
                          "(it is created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"--out {out}: {existing} is a file, not a folder; pass a folder")
    # The mode bits as well as the write test below: root may write to a folder marked
    # read-only, which is still a folder the user asked not to be written to.
    if not existing.stat().st_mode & 0o222:
        raise OutputError(f"--out {out}: {existing} is read-only (mode "
                          f"{existing.stat().st_mode & 0o777:o}); pass a folder you can "
                          "write to")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out}: cannot create the folder ({e.strerror or e}); pass a "
                          "folder you can write to") from e
    probe = out / f".jaxps-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"--out {out} is not writable ({e.strerror or e}); pass a folder "
                          "you can write to") from e
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise OutputError(f"--out {out}: {free / 2**20:.1f} MiB free, this run needs about "
                          f"{need_bytes / 2**20:.1f} MiB (exports and a checkpoint); free "
                          "some space or choose another folder")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """The whole metrics file, one JSON object per line, replaced at once (never half a line)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def write_npy(path: Path, shape: tuple[int, ...], parts: Iterable[np.ndarray]) -> None:
    """Atomically write a float32 .npy of ``shape`` (any rank; chunks split the first axis)
    from row chunks, so no full copy is ever in memory."""

    def write(f):
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": tuple(shape)})
        rows = 0
        for part in parts:
            part = np.ascontiguousarray(part, dtype="<f4")
            f.write(part.tobytes())
            rows += len(part)
        if rows != shape[0]:
            raise ValueError(f"{path}: wrote {rows} rows, expected {shape[0]}")

    _atomic(path, write)
