"""Load a knowledge graph from train/valid/test.txt into int64 triples, with a binary cache.

File format (the ConvE / LibKGE / CoDEx releases): UTF-8 text, one triple per line,
``head<TAB>relation<TAB>tail``. Tolerated: CRLF line endings (FB15k-237 has them; a reader that
keeps the ``\\r`` silently doubles the tail entities), a UTF-8 byte-order mark, and trailing
newlines / blank lines at the end of a file. Everything else that is not exactly three non-empty
tab-separated fields is an error naming ``path:lineno``. Strict on purpose, where a lenient reader
would silently change the graph:

- A field with leading or trailing spaces is an error (rejected, not stripped): ``"a\t r\tb"``
  would otherwise name a second relation " r" (UMLS with padded fields: 263 entities instead of
  135, test MRR 0.43 -> 0.15). Spaces inside a name are kept (names are opaque).
- A first line that looks like a header (all three fields header words such as
  ``head relation tail``, ``subject predicate object``, ``h r t``) is an error, not a triple.
- A valid.txt / test.txt that exists but holds no triple is an error at load time (delete the
  file to train without that split), not a crash after training.

Ids: entities and relations are numbered 0, 1, ... in order of first appearance over train, then
valid, then test (within a line: head before tail). So the ids ``[0, k)`` are exactly the k
entities seen in training, and an entity that occurs only in valid/test is kept and gets an id
``>= k``. It is kept (as LibKGE does) so those triples can still be evaluated, ranked like any
other query; `KgeDataset.unseen_counts` reports how many there are so a run can say how it
handled them.

Parsing works on blocks of about `_CHUNK_BYTES`: structure is checked with numpy on the bytes,
fields are split by ``str.split`` and mapped to ids through one dict with C-level iteration, so
there is no Python loop per line (Wikidata5M's 21M lines stay feasible in time and memory).

Cache: the triples and id lists are stored as ``<name>-<key>.npz`` in ``parsed/`` of the user
cache folder (`user_cache_dir`), never beside the user's data; key hashes the content of each
split file (sha256), its split name and the cache format version, so a changed file gets a new
cache and two copies of a dataset share one (FB15k-237, 23 MB: 0.03 s from the cache, hashing
included, against 0.4 s to parse). An unreadable cache file is ignored and rewritten.
"""

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from collections import defaultdict
from itertools import count
from pathlib import Path
from typing import Mapping

import numpy as np
import pooch

SPLITS = ("train", "valid", "test")
_CACHE_VERSION = 2  # 2: caches parsed before the space/header/empty-split checks are re-read
_CHUNK_BYTES = 1 << 24  # parse block size: bounds the memory taken by Python str objects
_BOM = b"\xef\xbb\xbf"
_FIELDS = ("head", "relation", "tail")
_HEADER_WORDS = frozenset({"head", "relation", "tail", "subject", "predicate", "object", "h", "r",
                           "t", "s", "p", "o", "rel", "source", "target", "from", "to", "label",
                           "edge", "e1", "e2", "entity1", "entity2", "head_id", "relation_id",
                           "tail_id", "subject_id", "object_id", "src", "dst"})


class DataError(ValueError):
    """A dataset file or folder that cannot be used as given; the message says where and why."""


@dataclass(frozen=True)
class KgeDataset:
    """A knowledge graph as integer triples. Immutable; safe to share between threads.

    Attributes:
      name: dataset name (the folder's name unless given).
      entity_ids: object [num_entities]: id -> entity name as written in the files.
      relation_ids: object [num_relations]: id -> relation name.
      splits: split name -> int64 [n, 3] (head, relation, tail) ids. "train" is always
        present; "valid" / "test" are absent when their file is (see `missing_splits`).
      missing_splits: the split files that did not exist, e.g. ("test",).
      cache_path: the cache file read or written; None when loaded with cache=False.
      from_cache: True when the triples came from the cache rather than the text files.
      folder: the folder the files were read from (None for a dataset built in memory).
    """

    name: str
    entity_ids: np.ndarray
    relation_ids: np.ndarray
    splits: Mapping[str, np.ndarray]
    missing_splits: tuple[str, ...] = ()
    cache_path: Path | None = None
    from_cache: bool = False
    folder: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        if "train" not in self.splits:
            raise DataError(f"dataset {self.name!r}: splits must contain 'train'")
        for split, triples in self.splits.items():
            if triples.dtype != np.int64 or triples.ndim != 2 or triples.shape[1] != 3:
                raise DataError(f"dataset {self.name!r}: split {split!r} must be int64 [n, 3], "
                                f"got {triples.dtype} {triples.shape}")
            if len(triples) and (triples.min() < 0 or triples[:, [0, 2]].max() >= self.num_entities
                                 or triples[:, 1].max() >= self.num_relations):
                raise DataError(f"dataset {self.name!r}: split {split!r} has ids outside "
                                f"[0, {self.num_entities}) entities / [0, {self.num_relations}) relations")

    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def num_relations(self) -> int:
        return len(self.relation_ids)

    def unseen_mask(self, split: str) -> np.ndarray:
        """bool [n]: which triples of `split` have a head, tail or relation absent from train."""
        train = self.splits["train"]
        seen_e = np.zeros(self.num_entities, bool)
        seen_e[train[:, 0]] = True
        seen_e[train[:, 2]] = True
        seen_r = np.zeros(self.num_relations, bool)
        seen_r[train[:, 1]] = True
        t = self.splits[split]
        return ~(seen_e[t[:, 0]] & seen_e[t[:, 2]] & seen_r[t[:, 1]])

    def unseen_counts(self) -> dict[str, int]:
        """Per present non-train split: how many triples have an entity or relation unseen in train."""
        return {s: int(self.unseen_mask(s).sum()) for s in self.splits if s != "train"}


def load_dataset(folder: str | os.PathLike, *, name: str | None = None, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> KgeDataset:
    """Read ``folder/{train,valid,test}.txt`` (format and id order: see the module docstring).

    Args:
      folder: the dataset folder. train.txt is required; a missing valid.txt / test.txt only
        drops that split (recorded in `KgeDataset.missing_splits`).
      name: the dataset's name; default: the folder's name.
      cache: read/write the binary cache; False always parses the text files and writes nothing.
      cache_dir: where the cache goes; default: ``user_cache_dir() / "parsed"``.

    Raises:
      DataError: missing folder or train.txt, an empty split file, a header line, a field
        with leading/trailing spaces, or a malformed / non-UTF-8 line (the message gives
        ``path:lineno`` and the line).
    """
    folder = Path(folder)
    name = name or folder.resolve().name
    paths = _split_paths(folder)
    missing = tuple(s for s in SPLITS if s not in paths)
    cache_path = _cache_file(name, paths, cache_dir) if cache else None
    if cache_path is not None:
        cached = _read_cache(cache_path, name, missing, folder)
        if cached is not None:
            return cached
    entities: dict[str, int] = _id_table()
    relations: dict[str, int] = _id_table()
    splits = {}
    for split, path in paths.items():
        splits[split] = _parse_file(path, entities, relations)
        if split == "train" and not len(splits[split]):
            raise DataError(f"{path}: no triples; train.txt needs at least one line "
                            "head<TAB>relation<TAB>tail")
        if not len(splits[split]):
            raise DataError(f"{path}: no triples; fill it (head<TAB>relation<TAB>tail per "
                            f"line) or delete it to train without a {split} split")
    dataset = KgeDataset(name, _names(entities), _names(relations), splits, missing, cache_path,
                         folder=folder)
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def user_cache_dir() -> Path:
    """The platform's user cache folder for jaxps (``pooch.os_cache``: ``~/.cache/jaxps`` on
    Linux, ``$XDG_CACHE_HOME/jaxps`` when that is set): parse caches, generated graphs and,
    unless ``$JAXPS_DATA`` is set, downloaded datasets."""
    return Path(pooch.os_cache("jaxps"))


def _split_paths(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist (or is not a folder); pass a "
                        "folder holding train.txt, valid.txt, test.txt")
    paths = {s: folder / f"{s}.txt" for s in SPLITS if (folder / f"{s}.txt").is_file()}
    if "train" not in paths:
        listing = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(listing[:20]) + (f", ... ({len(listing)} entries)" if len(listing) > 20 else "")
        raise DataError(f"{folder}: no train.txt (found: {shown or 'nothing'}); a dataset folder "
                        "holds train.txt and optionally valid.txt, test.txt, one "
                        "head<TAB>relation<TAB>tail per line")
    return paths


def _parse_file(path: Path, entities: dict[str, int], relations: dict[str, int]) -> np.ndarray:
    """int64 [n, 3] triples of one file; extends `entities` / `relations` with new names."""
    raw = path.read_bytes()
    pos = len(_BOM) if raw.startswith(_BOM) else 0
    end = len(raw)
    while end > pos and raw[end - 1] in b"\r\n":  # trailing newlines and blank lines
        end -= 1
    parts, lineno = [], 1
    while pos < end:
        cut = raw.find(b"\n", pos + _CHUNK_BYTES, end) if end - pos > _CHUNK_BYTES else -1
        cut = end if cut < 0 else cut
        block = raw[pos:cut - 1] if cut < end and raw[cut - 1] == 13 else raw[pos:cut]  # CRLF cut
        parts.append(_parse_block(block, path, lineno, entities, relations))
        lineno += block.count(b"\n") + 1
        pos = cut + 1
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)


def _parse_block(block: bytes, path: Path, lineno: int, entities: dict[str, int],
                 relations: dict[str, int]) -> np.ndarray:
    """Triples of whole lines `block` (no trailing newline) that start at line `lineno`."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
        if (i := block.find(b"\r")) >= 0:
            raise _line_error(path, block, lineno, i, "carriage return (\\r) inside a line")
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as e:
        column = e.start - block.rfind(b"\n", 0, e.start)
        raise _line_error(path, block, lineno, e.start,
                          f"not valid UTF-8 ({e.reason} at byte {column} of the line)") from e
    _check_fields(block, path, lineno)
    _check_spaces(block, path, lineno)
    flat = text.replace("\n", "\t").split("\t")
    if lineno == 1 and all(f.lower() in _HEADER_WORDS for f in flat[:3]):
        raise _line_error(path, block, lineno, 0, "a header line, not a triple (the files have "
                          "no header: delete this line)")
    n = len(flat) // 3
    ends: list = [None] * (2 * n)  # head, tail, head, tail, ...: first-appearance order
    ends[0::2], ends[1::2] = flat[0::3], flat[2::3]
    rels = flat[1::3]
    triples = np.empty((n, 3), np.int64)
    triples[:, [0, 2]] = _ids(entities, ends).reshape(n, 2)
    triples[:, 1] = _ids(relations, rels)
    return triples


def _check_fields(block: bytes, path: Path, lineno: int) -> None:
    """Raise on the first line without exactly three non-empty tab-separated fields."""
    a = np.frombuffer(block, np.uint8)
    seps = np.flatnonzero(a <= 10)  # tab 9, newline 10, and control bytes 0-8 (never valid)
    kinds = a[seps]
    # Fast path: separators run tab, tab, newline, ..., tab, tab and no two are adjacent.
    if (len(seps) % 3 == 2 and (kinds[0::3] == 9).all() and (kinds[1::3] == 9).all()
            and (kinds[2::3] == 10).all() and seps[0] > 0 and seps[-1] < len(a) - 1
            and (np.diff(seps) > 1).all()):
        return
    newlines = np.flatnonzero(a == 10)
    if (ctrl := np.flatnonzero(kinds < 9)).size:
        pos = int(seps[ctrl[0]])
        raise _line_error(path, block, lineno, pos, f"control character {chr(a[pos])!r} in a line")
    tabs = np.bincount(np.searchsorted(newlines, seps[kinds == 9]), minlength=len(newlines) + 1)
    bounds = np.concatenate(([-1], seps, [len(a)]))
    empty_starts = bounds[:-1][np.diff(bounds) == 1] + 1
    bad = np.concatenate((np.flatnonzero(tabs != 2)[:1], np.searchsorted(newlines, empty_starts[:1])))
    line = int(bad.min())
    start = int(newlines[line - 1]) + 1 if line else 0
    text = block[start:newlines[line] if line < len(newlines) else len(block)]
    if not text:
        reason = "blank line (only trailing blank lines are allowed)"
    elif tabs[line] != 2:
        reason = f"expected 3 tab-separated fields (head, relation, tail), found {tabs[line] + 1}"
    else:
        field = _FIELDS[text.split(b"\t").index(b"")]
        reason = f"empty {field} field"
    raise _line_error(path, block, lineno, start, reason)


def _check_spaces(block: bytes, path: Path, lineno: int) -> None:
    """Raise on the first field that starts or ends with a space (vectorized over the block)."""
    a = np.frombuffer(block, np.uint8)
    sp = np.flatnonzero(a == 32)
    if not len(sp):
        return
    before = np.where(sp > 0, a[np.maximum(sp - 1, 0)], 9)
    after = np.where(sp < len(a) - 1, a[np.minimum(sp + 1, len(a) - 1)], 9)
    bad = np.flatnonzero((before == 9) | (before == 10) | (after == 9) | (after == 10))
    if not len(bad):
        return
    pos = int(sp[bad[0]])
    start = block.rfind(b"\n", 0, pos) + 1
    field = _FIELDS[min(block.count(b"\t", start, pos), 2)]
    raise _line_error(path, block, lineno, pos,
                      f"{field} field has leading or trailing spaces (rejected rather than "
                      "stripped, so that no name silently becomes two entities; remove the spaces "
                      "next to the tabs and at the line's ends)")


def _line_error(path: Path, block: bytes, lineno: int, pos: int, reason: str) -> DataError:
    start = block.rfind(b"\n", 0, pos) + 1
    stop = block.find(b"\n", pos)
    line = block[start:stop if stop >= 0 else len(block)].decode("utf-8", "replace")
    shown = repr(line[:120]) + ("..." if len(line) > 120 else "")
    lineno += block.count(b"\n", 0, pos)
    return DataError(f"{path}:{lineno}: {reason}: {shown}")


def _id_table() -> dict[str, int]:
    """name -> id; looking up a new name gives it the next id (first-appearance order)."""
    return defaultdict(count().__next__)


def _ids(table: dict[str, int], tokens: list[str]) -> np.ndarray:
    # map + fromiter over a defaultdict: one C-level lookup per token, no Python bytecode.
    return np.fromiter(map(table.__getitem__, tokens), np.int64, count=len(tokens))


def _names(table: dict[str, int]) -> np.ndarray:
    return np.fromiter(table, dtype=object, count=len(table))


# ---- cache -------------------------------------------------------------------------------------

def _cache_file(name: str, paths: dict[str, Path], cache_dir) -> Path:
    key = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for split, path in paths.items():
        key.update(f"\0{split}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                key.update(chunk)
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "parsed"
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return root / f"{safe}-{key.hexdigest()[:20]}.npz"


def _read_cache(path: Path, name: str, missing: tuple[str, ...], folder: Path) -> KgeDataset | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != _CACHE_VERSION:
                return None
            splits = {s: z[f"split_{s}"] for s in SPLITS if f"split_{s}" in z.files}
            return KgeDataset(name, _unpack(z["entities"]), _unpack(z["relations"]), splits,
                              missing, path, from_cache=True, folder=folder)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # DataError too
        return None  # a truncated or foreign file: parse the text again and overwrite it


def _write_cache(path: Path, dataset: KgeDataset) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(_CACHE_VERSION), entities=_pack(dataset.entity_ids),
                     relations=_pack(dataset.relation_ids),
                     **{f"split_{s}": t for s, t in dataset.splits.items()})
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not write the dataset cache {path} ({e}); pass cache=False, or "
                        "cache_dir= a writable folder") from e


def _pack(names: np.ndarray) -> np.ndarray:
    # Names cannot contain "\n" (it ends a line), so one joined blob stores them compactly.
    return np.frombuffer("\n".join(names).encode("utf-8"), np.uint8)


def _unpack(blob: np.ndarray) -> np.ndarray:
    return np.array(blob.tobytes().decode("utf-8").split("\n"), dtype=object)
