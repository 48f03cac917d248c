"""``--init-embeddings DIR``: start a KGE run from the embeddings another run exported.

DIR is a finished run's ``--out`` folder (or any folder with the same files): it needs
``entity_embeddings.npy`` + ``entity_ids.txt`` and ``relation_embeddings.npy`` +
``relation_ids.txt``, and with ``--reciprocal`` also ``reciprocal_relation_embeddings.npy``
(row i: the inverse of relation i). Rows are matched by *name*, so the exporting run may have
numbered the entities differently (another dataset version); every entity and relation of this
run must be there, and the row widths must be what ``--model`` and ``--dim`` give. Only the
embedding columns are set; the optimizer state starts afresh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import jaxps
from train.kge.data import DataError, KgeDataset


def read_exported(folder: Path, dataset: KgeDataset, widths: dict, *, reciprocal: bool,
                  how: str = "") -> dict[str, np.ndarray]:
    """Rows per table in this dataset's id order: "entity" [E, We]; "relation" [R, Wr], or
    [2R, Wr] with the inverse rows after the forward ones when ``reciprocal``.

    Raises:
      DataError: a missing file, a row count that differs from its id file, a width that is
        not this model's (``how`` names the flags, e.g. "--model complex --dim 256"), or a
        name of this dataset absent from the export.
    """
    tables = {"entity": [("entity_embeddings.npy", "entity_ids.txt", dataset.entity_ids)],
              "relation": [("relation_embeddings.npy", "relation_ids.txt", dataset.relation_ids)]}
    if reciprocal:
        tables["relation"].append(("reciprocal_relation_embeddings.npy", "relation_ids.txt",
                                   dataset.relation_ids))
    out = {}
    for table, parts in tables.items():
        pieces = []
        for file, ids_file, names in parts:
            pieces.append(_rows_by_name(folder, file, ids_file, names, widths[table], how,
                                        reciprocal))
        out[table] = np.concatenate(pieces)
    return out


def _rows_by_name(folder: Path, file: str, ids_file: str, names: np.ndarray, width: int,
                  how: str, reciprocal: bool) -> np.ndarray:
    path, ids_path = folder / file, folder / ids_file
    for p in (path, ids_path):
        if not p.is_file():
            hint = (" (the run was trained without reciprocal relations: pass --no-reciprocal)"
                    if p.name.startswith("reciprocal_") and reciprocal else "")
            raise DataError(f"--init-embeddings {folder}: no {p.name}{hint}; pass the --out "
                            "folder of a finished train.kge run")
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"--init-embeddings: {path} is not a readable .npy file ({e})") from e
    exported = ids_path.read_text(encoding="utf-8").splitlines()
    if rows.ndim != 2 or rows.shape[0] != len(exported):
        raise DataError(f"--init-embeddings: {path} has shape {rows.shape}, but {ids_path.name} "
                        f"names {len(exported)} rows")
    if rows.shape[1] != width:
        raise DataError(f"--init-embeddings: {path} has rows of width {rows.shape[1]}, this run "
                        f"needs {width} ({how or 'its --model and --dim'}); pass the --model "
                        "and --dim of the run that exported them")
    position = {name: i for i, name in enumerate(exported)}
    index = np.fromiter((position.get(n, -1) for n in names), np.int64, count=len(names))
    if (missing := np.flatnonzero(index < 0)).size:
        shown = ", ".join(repr(str(names[i])) for i in missing[:5])
        raise DataError(f"--init-embeddings: {len(missing)} of this dataset's {len(names)} names "
                        f"are not in {ids_path} (first: {shown}); export from a run on the "
                        "same dataset")
    rows = np.asarray(rows[index], np.float32)
    if not np.isfinite(rows).all():
        raise DataError(f"--init-embeddings: {path} holds NaN or Inf values")
    return rows


def prepare(folder: str, dataset: KgeDataset, widths: dict, *, reciprocal: bool, how: str,
            comm) -> dict | None:
    """Collective: rank 0 reads and checks the rows (a failure fails every rank with its
    message); returns them on rank 0, None on the others."""
    held = {}

    def read():
        held["rows"] = read_exported(Path(folder), dataset, widths, reciprocal=reciprocal,
                                     how=how)

    jaxps.run_on_root(read, comm=comm)
    return held.get("rows")


def apply(ps, rows: dict | None, widths: dict, *, chunk: int = 1 << 16) -> None:
    """Collective: rank 0 (the one holding ``rows``) overwrites the embedding columns of
    every row, keeping each row's optimizer state; all ranks then wait until it is visible."""
    if rows is not None:
        for table, values in rows.items():
            w = widths[table]
            for a in range(0, len(values), chunk):
                keys = np.arange(a, min(a + chunk, len(values)))
                current = ps.pull(table, keys)
                current[:, :w] = values[a:a + len(keys)]
                ps.set(table, keys, current)
    ps.wait_sync()
