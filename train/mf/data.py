"""Ratings files -> int64 user/item ids and float32 ratings, with a binary cache.

File format: UTF-8 text, one rating per line, ``user SEP item SEP rating [SEP timestamp]``
with SEP one of tab, comma, space or ``::`` (MovieLens 100K ``u.data``/``u1.base``, 1M/10M
``ratings.dat``, 20M/25M ``ratings.csv``). The separator and the field count (3 or 4) are
taken from the first data line and must hold on every line. A first line none of whose
fields is a number is a header (``userId,movieId,rating,timestamp`` of MovieLens 20M) and
skipped; a header-like line anywhere else is a malformed line. Tolerated: CRLF line endings,
a UTF-8 byte-order mark, trailing blank lines. Everything else is a ``DataError`` naming
``path:lineno``: a wrong field count, an empty id, a field with leading or trailing blanks
(rejected, not stripped, as train.kge does: a padded id would name a second user or item),
a control character (NUL), an empty or non-numeric rating, NaN/Inf, a rating outside the
declared range (``--rating-range``; with the count of such lines), undecodable bytes. An
empty train or test split (a file without ratings, a split fraction that leaves none) is an
error when the data is loaded, before anything is trained or written.

Ids: users and items are numbered 0, 1, ... in order of first appearance over train, then
valid, then test, so ids ``[0, k)`` are the k users (items) seen in training; the original
ids (ints when all are integers, else strings) are kept for the export.

Parsing splits the text with ``str.split`` and converts each column with one numpy call; no
Python loop per line runs unless a line is malformed (then one finds it). Cache: parsed
files are stored in ``~/.cache/jaxps/mf/`` (``$XDG_CACHE_HOME``) keyed by the files'
absolute paths, sizes, mtimes, the split settings and the format version.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from train.kge.data import user_cache_dir

_CACHE_VERSION = 2  # 2: caches parsed before the padding/control/header checks are re-read
_BOM = "\ufeff"
SPLITS = ("train", "valid", "test")
FOLDER_FILES = ("ratings.dat", "ratings.csv", "u.data")


class DataError(ValueError):
    """A ratings file or folder that cannot be used as given; the message says where and why."""


class Ratings(NamedTuple):
    """One split: parallel arrays, one entry per rating."""

    users: np.ndarray    # int64 [n] user ids (dense, 0-based)
    items: np.ndarray    # int64 [n] item ids
    ratings: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.users)

    def take(self, index: np.ndarray) -> "Ratings":
        return Ratings(self.users[index], self.items[index], self.ratings[index])


@dataclass(frozen=True)
class RatingsDataset:
    """A ratings matrix as integer pairs. Immutable; safe to share between threads.

    Attributes:
      name: for messages and the summary.
      user_ids, item_ids: [num_users] / [num_items]: dense id -> original id.
      splits: "train" (always), "valid", "test" (when present) -> Ratings.
      rating_range: (low, high): declared, or the range of the training ratings.
      from_cache: True when the arrays came from the binary cache.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    splits: Mapping[str, Ratings]
    rating_range: tuple[float, float]
    from_cache: bool = False

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def mean(self) -> float:
        """The global mean of the training ratings (mu of the model)."""
        return float(np.mean(self.splits["train"].ratings, dtype=np.float64))


class RawRatings(NamedTuple):
    """One parsed file before id remapping."""

    users: np.ndarray    # int64 or str [n]: ids as written
    items: np.ndarray
    ratings: np.ndarray  # float64 [n]
    lines: np.ndarray    # int64 [n]: 1-based line number of each rating


def parse_file(path: str | os.PathLike, rating_range: tuple[float, float] | None = None
               ) -> RawRatings:
    """Parse one ratings file (format: module docstring).

    Raises:
      DataError: unreadable file, malformed line, or a rating outside ``rating_range``
        (the message names ``path:lineno``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ratings file {path} does not exist (or is not a file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason}); ratings files are "
                        "UTF-8 text") from e
    if text.startswith(_BOM):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if (i := text.find("\r")) >= 0:
            raise DataError(f"{path}:{text.count(chr(10), 0, i) + 1}: carriage return (\\r) "
                            "inside a line")
    text = text.rstrip("\n")
    _check_control(text, path)
    if not text:
        raise DataError(f"{path}: no ratings; a ratings file has one 'user item rating "
                        "[timestamp]' per line")
    first_nl = text.find("\n")
    first = text if first_nl < 0 else text[:first_nl]
    sep = _separator(first)
    start_line = 1
    if _is_header(first, sep):
        text = "" if first_nl < 0 else text[first_nl + 1:]
        start_line = 2
        if not text:
            raise DataError(f"{path}: only a header line, no ratings")
    if sep == "::":
        text = text.replace("::", "\x1f")
        sep = "\x1f"
    lines = text.split("\n")
    data = np.frombuffer(text.encode("utf-8"), np.uint8)  # ASCII bytes never occur inside
    counts = _separators_per_line(data, sep, len(lines))  # a multi-byte UTF-8 character
    nfields = int(counts[0]) + 1
    bad = np.flatnonzero(counts != counts[0])
    if nfields not in (3, 4) or len(bad):
        at = 0 if nfields not in (3, 4) else int(bad[0])
        raise DataError(f"{path}:{at + start_line}: expected 3 or 4 fields "
                        f"(user item rating [timestamp]) separated by {_sep_name(sep)} as on "
                        f"the first line, got {counts[at] + 1}: {_show(lines[at])}")
    _check_padding(data, sep, path, lines, start_line)
    flat = text.replace("\n", sep).split(sep)
    users, items, values = flat[0::nfields], flat[1::nfields], flat[2::nfields]
    line_no = np.arange(start_line, start_line + len(lines), dtype=np.int64)
    for name, col in (("user", users), ("item", items)):
        if "" in col:
            at = col.index("")
            raise DataError(f"{path}:{line_no[at]}: empty {name} id: {lines[at][:200]!r}")
    try:
        ratings = np.array(values, dtype=np.float64)
    except ValueError:
        at = next(k for k, v in enumerate(values) if not _is_float(v))
        raise DataError(f"{path}:{line_no[at]}: rating {values[at]!r} is not a number: "
                        f"{lines[at][:200]!r}") from None
    if not np.isfinite(ratings).all():
        at = int(np.flatnonzero(~np.isfinite(ratings))[0])
        raise DataError(f"{path}:{line_no[at]}: rating {values[at]!r} is not finite")
    if rating_range is not None:
        lo, hi = rating_range
        outside = np.flatnonzero((ratings < lo) | (ratings > hi))
        if len(outside):
            at = int(outside[0])
            raise DataError(f"{path}:{line_no[at]}: rating {values[at]} outside the declared "
                            f"range [{lo:g}, {hi:g}] ({len(outside)} such lines); fix the file "
                            "or --rating-range")
    return RawRatings(_ids(users), _ids(items), ratings, line_no)


def _check_control(text: str, path: Path) -> None:
    """Raise on the first control character other than tab and newline (a NUL, a \\x1f)."""
    b = np.frombuffer(text.encode("utf-8"), np.uint8)
    bad = np.flatnonzero((b < 32) & (b != 9) & (b != 10))
    if len(bad):
        at = int(bad[0])
        raise DataError(f"{path}:{int(np.count_nonzero(b[:at] == 10)) + 1}: control character "
                        f"{bytes(b[at:at + 1])!r} in a line; ratings files are plain text")


def _check_padding(b: np.ndarray, sep: str, path: Path, lines: list, start_line: int) -> None:
    """Raise on the first field with leading or trailing blanks (spaces, tabs that are not
    the separator; with spaces as separator: a doubled space or one at a line's start or
    end). Vectorized over the bytes; a Python loop only to describe the bad line.

    Rejected, not stripped, as in train.kge: ``"7\t 12\t4"`` names item " 12", which
    becomes a second item beside "12" as soon as one id of the file is not an integer.
    """
    n = len(b)
    if not n:
        return
    bound = (b == ord(sep)) | (b == 10)
    prev_bound = np.concatenate([[True], bound[:-1]])   # byte i starts a field
    next_bound = np.concatenate([bound[1:], [True]])    # byte i ends a field
    blank = (b == 32) | (b == 9)
    if sep == " ":
        bad = (b == 32) & (prev_bound | next_bound)  # an empty field beside this space
        bad |= (b == 9) & (prev_bound | next_bound)
    else:
        bad = blank & ~bound & (prev_bound | next_bound)
    where = np.flatnonzero(bad)
    if not len(where):
        return
    index = int(np.count_nonzero(b[:int(where[0])] == 10))
    line = lines[index]
    fields = line.split(sep)
    names = ("user", "item", "rating", "timestamp")
    k = next((k for k, f in enumerate(fields) if f != f.strip(" \t") or not f), 0)
    what = names[k] if k < len(names) else f"field {k + 1}"
    raise DataError(f"{path}:{index + start_line}: {what} field has leading or trailing "
                    f"blanks (rejected rather than stripped, so that no id silently names a "
                    f"second user or item; remove them): {_show(line)}")


def _show(line: str) -> str:
    """A line for a message, as written (``::`` is parsed as \\x1f)."""
    return repr(line.replace("\x1f", "::")[:200])


def _separators_per_line(b: np.ndarray, sep: str, num_lines: int) -> np.ndarray:
    """int64 [num_lines]: how many ``sep`` (one ASCII character) each line of the UTF-8
    bytes ``b`` holds."""
    newlines = np.flatnonzero(b == 10)
    line_of_sep = np.searchsorted(newlines, np.flatnonzero(b == ord(sep)))
    return np.bincount(line_of_sep, minlength=num_lines)


def _separator(line: str) -> str:
    for sep in ("::", "\t", ","):
        if sep in line:
            return sep
    return " "


def _sep_name(sep: str) -> str:
    return {"\t": "tabs", ",": "commas", " ": "spaces", "\x1f": "'::'"}[sep]


def _is_header(line: str, sep: str) -> bool:
    """A first line none of whose fields is a number (``userId,movieId,rating,timestamp``).

    Stricter than "the rating is not a number": ``1,2,five`` on line 1 is a bad rating, not
    a header, and is reported as such."""
    fields = line.split(sep)
    return len(fields) >= 3 and not any(_is_float(f) for f in fields)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _ids(column: list[str]) -> np.ndarray:
    """int64 when every id is an integer, else the strings."""
    try:
        return np.array(column, dtype=np.int64)
    except ValueError:
        return np.array(column, dtype=str)


# ----- datasets ------------------------------------------------------------------------------
def remap(parts: Mapping[str, RawRatings], rating_range=None, name: str = "ratings"
          ) -> RatingsDataset:
    """Dense ids in order of first appearance over the splits in the order given."""
    cols = {}
    for field in ("users", "items"):
        arrays = [getattr(p, field) for p in parts.values()]
        if any(a.dtype.kind == "U" for a in arrays):
            arrays = [a.astype(str) for a in arrays]
        joined = np.concatenate(arrays)
        uniq, first, inverse = np.unique(joined, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")      # new id -> index into uniq
        new_of_uniq = np.empty(len(uniq), np.int64)
        new_of_uniq[order] = np.arange(len(uniq))
        cols[field] = (uniq[order], new_of_uniq[inverse.ravel()])
    splits, offset = {}, 0
    for split, p in parts.items():
        n = len(p.ratings)
        splits[split] = Ratings(cols["users"][1][offset:offset + n],
                                cols["items"][1][offset:offset + n],
                                p.ratings.astype(np.float32))
        offset += n
    return make_dataset(name, cols["users"][0], cols["items"][0], splits, rating_range)


def make_dataset(name, user_ids, item_ids, splits, rating_range=None, from_cache=False
                 ) -> RatingsDataset:
    """A RatingsDataset after checking that train (and a present test) is non-empty."""
    for split in SPLITS:
        if split in splits and not len(splits[split]):
            raise DataError(f"{name}: the {split} split is empty; give a file with ratings "
                            "(or change --split / --valid-fraction: a fraction of 0 means "
                            "no such split)")
    train = splits["train"].ratings
    if rating_range is None:
        rating_range = (float(train.min()), float(train.max()))
    return RatingsDataset(name, user_ids, item_ids, dict(splits), tuple(rating_range),
                          from_cache)


def split_seeded(raw: RawRatings, fractions, seed: int, names=SPLITS) -> dict[str, RawRatings]:
    """A seeded random split of one file's ratings by ``fractions`` (same on every rank)."""
    perm = np.random.default_rng([seed, 17]).permutation(len(raw.ratings))
    cuts = np.cumsum([round(f * len(perm)) for f in fractions[:-1]])
    out = {}
    for name, fraction, index in zip(names, fractions, np.split(perm, cuts)):
        if name == "train" or fraction > 0:  # a split asked for but empty is an error later
            index = np.sort(index)  # keep file order inside a split
            out[name] = RawRatings(*(a[index] for a in raw))
    return out


def load_files(train: str, valid: str = "", test: str = "", *, valid_fraction: float = 0.0,
               rating_range=None, seed: int = 0, cache: bool = True) -> RatingsDataset:
    """``--train FILE [--valid FILE] [--test FILE]``; valid may be carved from train."""
    files = {s: p for s, p in (("train", train), ("valid", valid), ("test", test)) if p}
    key = ("files", valid_fraction, seed, rating_range)
    return _cached(files, key, lambda: _from_files(files, valid_fraction, rating_range, seed),
                   cache)


def _from_files(files, valid_fraction, rating_range, seed):
    parts = {s: parse_file(p, rating_range) for s, p in files.items()}
    if valid_fraction:
        carved = split_seeded(parts["train"], (1 - valid_fraction, valid_fraction), seed,
                              names=("train", "valid"))
        parts = {"train": carved["train"], "valid": carved.get("valid"),
                 "test": parts.get("test")}
        parts = {s: p for s, p in parts.items() if p is not None}
    return remap(parts, rating_range, Path(files["train"]).stem)


def load_single(path: str, fractions, *, rating_range=None, seed: int = 0,
                cache: bool = True) -> RatingsDataset:
    """``--data FILE|DIR``: one ratings file, split by ``fractions`` (train, valid, test)."""
    p = Path(path)
    if p.is_dir():
        found = [p / f for f in FOLDER_FILES if (p / f).is_file()]
        if not found:
            raise DataError(f"{p}: no {', '.join(FOLDER_FILES)}; pass a ratings file, or "
                            "--train FILE --test FILE")
        p = found[0]
    files = {"data": str(p)}
    name = p.parent.name if p.name in FOLDER_FILES else p.stem

    def build():
        raw = parse_file(p, rating_range)
        return remap(split_seeded(raw, fractions, seed), rating_range, name)

    return _cached(files, ("single", tuple(fractions), seed, rating_range), build, cache)


# ----- the binary cache ----------------------------------------------------------------------
def _cached(files: dict, key: tuple, build, cache: bool) -> RatingsDataset:
    if not cache:
        return build()
    h = hashlib.sha256(repr((_CACHE_VERSION, key)).encode())
    for split, p in sorted(files.items()):
        p = Path(p)
        st = p.stat() if p.is_file() else None
        h.update(repr((split, str(p.resolve()), st and st.st_size, st and st.st_mtime_ns))
                 .encode())
    path = user_cache_dir() / "mf" / f"{h.hexdigest()[:24]}.npz"
    dataset = read_cache(path)
    if dataset is None:
        dataset = build()
        write_cache(path, dataset)
    return dataset


def write_cache(path: Path, d: RatingsDataset) -> None:
    """Write aside and rename, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{f}": getattr(r, f) for s, r in d.splits.items() for f in Ratings._fields}
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, name=d.name, user_ids=d.user_ids, item_ids=d.item_ids,
                 rating_range=np.array(d.rating_range), **arrays)
        os.replace(tmp, path)
    except BaseException:  # a full disk must not keep a partial file filling it
        tmp.unlink(missing_ok=True)
        raise


def read_cache(path: Path) -> RatingsDataset | None:
    """The cached dataset, or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            splits = {s: Ratings(*(z[f"{s}_{f}"] for f in Ratings._fields))
                      for s in SPLITS if f"{s}_users" in z}
            return make_dataset(str(z["name"]), z["user_ids"], z["item_ids"], splits,
                                tuple(float(x) for x in z["rating_range"]), True)
    except (OSError, ValueError, KeyError):
        return None
