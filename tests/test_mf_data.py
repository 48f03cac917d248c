"""MF data: the ratings formats, bad input with file:line, id remapping, cache, splits, synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from train.mf import data as mfdata
from train.mf import synthetic
from train.mf.data import DataError, load_files, load_single, parse_file


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write(tmp_path, name, text: str | bytes):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("name, text", [
    ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n"),
    ("ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n1::914::3::978301968\n"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,3,4.5,964981247\n"
                    "1,6,4.0,964982224\n"),
    ("spaces.txt", "a x 1.5\r\nb y 2\r\na z 3\r\n\r\n"),
])
def test_formats(tmp_path, name, text):
    raw = parse_file(write(tmp_path, name, text))
    assert len(raw.ratings) == 3
    assert raw.lines.tolist() == ([2, 3, 4] if name.endswith(".csv") else [1, 2, 3])
    assert raw.users[0] == raw.users[2] and raw.users[0] != raw.users[1]
    d = mfdata.remap({"train": raw})
    assert d.num_users == 2 and d.num_items == 3
    assert d.splits["train"].users.tolist() == [0, 1, 0]    # order of first appearance
    assert d.splits["train"].ratings.dtype == np.float32


@pytest.mark.parametrize("text, where, what", [
    ("1\t2\t3\n1\t2\n", ":2:", "expected 3 or 4 fields"),
    ("1\t2\t3\n\n1\t3\t4\n", ":2:", "expected 3 or 4 fields"),
    ("1\t2\t3\t4\t5\n", ":1:", "expected 3 or 4 fields"),
    ("1\t2\t3\n1\t3\tfour\n", ":2:", "is not a number"),
    ("1\t2\t3\n1\t3\tnan\n", ":2:", "not finite"),
    ("1\t2\t3\n\t3\t4\n", ":2:", "empty user id"),
    (b"1\t2\t3\n1\t\xff\t4\n", ":2:", "not valid UTF-8"),
    ("1\t2\t3\r1\t3\t4\n", ":1:", "carriage return"),
    ("", "", "no ratings"),
    ("userId,movieId,rating\n", "", "only a header"),
])
def test_bad_input_names_the_line(tmp_path, text, where, what):
    p = write(tmp_path, "bad.txt", text)
    with pytest.raises(DataError) as e:
        parse_file(p)
    assert f"{p}{where}" in str(e.value) and what in str(e.value)


def test_declared_range(tmp_path):
    p = write(tmp_path, "r.txt", "1\t2\t3\n1\t3\t6\n2\t3\t0.5\n")
    with pytest.raises(DataError, match=r"r.txt:2: rating 6 outside the declared range "
                                        r"\[1, 5\] \(2 such lines\)"):
        parse_file(p, (1, 5))
    assert len(parse_file(p).ratings) == 3


def test_empty_test_split_is_an_error(tmp_path):
    train = write(tmp_path, "train.txt", "1\t2\t3\n")
    with pytest.raises(DataError, match="the train split is empty"):
        load_single(str(train), (0.0, 0.0, 1.0), cache=False)
    with pytest.raises(DataError, match=r"missing.txt does not exist"):
        load_files(str(train), test=str(tmp_path / "missing.txt"), cache=False)


def test_files_ids_across_splits_cache_and_valid_fraction(tmp_path):
    train = write(tmp_path, "train.txt", "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\n"
                                                  for u in range(20) for i in range(10)))
    test = write(tmp_path, "test.txt", "5\t3\t4\n99\t3\t2\n")
    d = load_files(str(train), test=str(test), valid_fraction=0.1, seed=3)
    assert not d.from_cache
    assert len(d.splits["train"]) == 180 and len(d.splits["valid"]) == 20
    assert d.num_users == 21 and d.user_ids[20] == 99      # a test-only user gets the last id
    assert d.splits["test"].users.tolist() == [int(np.flatnonzero(d.user_ids == 5)[0]), 20]
    assert d.rating_range == (1.0, 5.0)
    again = load_files(str(train), test=str(test), valid_fraction=0.1, seed=3)
    assert again.from_cache
    for s in d.splits:
        for a, b in zip(d.splits[s], again.splits[s]):
            np.testing.assert_array_equal(a, b)
    other = load_files(str(train), test=str(test), valid_fraction=0.1, seed=4)
    assert not other.from_cache
    assert d.splits["valid"].users.tolist() != other.splits["valid"].users.tolist()


def test_folder_with_ratings_file(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    write(folder, "ratings.dat", "".join(f"{u}::{i}::{u % 5 + 1}::0\n"
                                         for u in range(30) for i in range(10)))
    d = load_single(str(folder), (0.8, 0.1, 0.1), seed=0)
    assert d.name == "ml-1m" and [len(d.splits[s]) for s in ("train", "valid", "test")] == [240, 30, 30]
    with pytest.raises(DataError, match="no ratings.dat, ratings.csv, u.data"):
        load_single(str(tmp_path), (0.8, 0.1, 0.1))


def test_movielens_100k_u1():
    base, test = SHARED_DATA / "ml-100k" / "u1.base", SHARED_DATA / "ml-100k" / "u1.test"
    if not base.is_file():
        pytest.skip(f"{base} not present")
    d = load_files(str(base), test=str(test), cache=False)
    assert len(d.splits["train"]) == 80000 and len(d.splits["test"]) == 20000
    assert d.rating_range == (1.0, 5.0) and abs(d.mean - 3.5283) < 1e-3


def test_synthetic_zipf_distinct_and_low_rank():
    r = synthetic.generate(2000, 500, 50000, skew=1.1, rank=4, noise=0.25, seed=1)
    keys = r.users * 500 + r.items
    assert len(np.unique(keys)) == len(keys) == 50000
    counts = np.sort(np.bincount(r.items, minlength=500))[::-1]
    assert counts[0] <= 1000                      # no column above rows / 2
    assert counts[:5].sum() >= 0.1 * len(keys)    # the head of a Zipf(1.1) over 500 columns
    assert counts[-100:].sum() < 0.05 * len(keys) and counts[250] < counts[0] / 10
    assert 0.9 < np.std(r.ratings) < 1.6 and abs(np.mean(r.ratings) - 3) < 0.1


def test_synthetic_spec_and_cache():
    with pytest.raises(DataError, match="give cells=N"):
        synthetic.parse_spec("synthetic:rows=10,cols=10")
    with pytest.raises(DataError, match="keys rows, cols, cells"):
        synthetic.parse_spec("synthetic:rows=10,cols=10,cells=5,foo=1")
    spec = "synthetic:rows=300,cols=100,cells=3000,seed=2"
    a = synthetic.load_synthetic(spec, (0.8, 0.1, 0.1))
    b = synthetic.load_synthetic(spec, (0.8, 0.1, 0.1))
    assert b.from_cache and [len(a.splits[s]) for s in ("train", "valid", "test")] == [2400, 300, 300]
    np.testing.assert_array_equal(a.splits["test"].ratings, b.splits["test"].ratings)
