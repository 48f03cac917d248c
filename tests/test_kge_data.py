"""KGE data layer: text loading and its errors, the cache, the dataset registry, synthetic graphs."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from train.kge import data, datasets, synthetic
from train.kge.data import DataError, KgeDataset, load_dataset

SHARED = Path(__file__).parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real datasets not found at {SHARED} (../shared/data from the repo)")


def _write(folder: Path, **splits: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, content in splits.items():
        (folder / f"{split}.txt").write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def _lines(n: int, offset: int = 0) -> list[str]:
    return [f"e{i % 17}\tr{i % 5}\te{(i * 7 + 3) % 23}" for i in range(offset, offset + n)]


def _same(a: KgeDataset, b: KgeDataset) -> bool:
    return (list(a.entity_ids) == list(b.entity_ids) and list(a.relation_ids) == list(b.relation_ids)
            and a.splits.keys() == b.splits.keys()
            and all(np.array_equal(a.splits[s], b.splits[s]) for s in a.splits))


# ---- loading -----------------------------------------------------------------------------------

def test_ids_follow_first_appearance_over_train_valid_test(tmp_path):
    folder = _write(tmp_path / "kg", train="a\tr1\tb\nb\tr2\tc\n", valid="c\tr1\td\n", test="e\tr3\ta\n")
    ds = load_dataset(folder, cache=False)
    assert list(ds.entity_ids) == ["a", "b", "c", "d", "e"]
    assert list(ds.relation_ids) == ["r1", "r2", "r3"]
    assert ds.splits["train"].tolist() == [[0, 0, 1], [1, 1, 2]]
    assert ds.splits["valid"].tolist() == [[2, 0, 3]]
    assert ds.splits["test"].tolist() == [[4, 2, 0]]
    assert all(t.dtype == np.int64 for t in ds.splits.values())
    assert (ds.name, ds.num_entities, ds.num_relations, ds.missing_splits) == ("kg", 5, 3, ())
    assert ds.unseen_counts() == {"valid": 1, "test": 1}  # d is new; e and r3 are new
    assert ds.unseen_mask("test").tolist() == [True]


def test_crlf_bom_and_trailing_blank_lines_load_like_lf(tmp_path):
    lines = _lines(40)
    lf = _write(tmp_path / "lf", train="\n".join(lines[:30]), valid="\n".join(lines[30:]) + "\n")
    crlf = _write(tmp_path / "crlf", train=b"\xef\xbb\xbf" + "\r\n".join(lines[:30]).encode() + b"\r\n\r\n",
                  valid="\r\n".join(lines[30:]) + "\r\n\n")
    a, b = load_dataset(lf, cache=False), load_dataset(crlf, cache=False)
    assert _same(a, b)
    assert not any("\r" in name or "\ufeff" in name for name in b.entity_ids)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_parsing_in_small_blocks_matches_one_block(tmp_path, monkeypatch, newline):
    folder = _write(tmp_path / "kg", train=newline.join(_lines(300)) + newline,
                    test=newline.join(_lines(50, offset=300)))
    whole = load_dataset(folder, cache=False)
    monkeypatch.setattr(data, "_CHUNK_BYTES", 37)
    assert _same(whole, load_dataset(folder, cache=False))


@pytest.mark.parametrize("chunk", [None, 40])
@pytest.mark.parametrize("line, reason", [
    ("a\tr", "expected 3 tab-separated fields (head, relation, tail), found 2"),
    ("a\tr\tb\tc", "found 4"),
    ("a b c", "found 1"),
    ("\tr\tb", "empty head field"),
    ("a\t\tb", "empty relation field"),
    ("a\tr\t", "empty tail field"),
    ("", "blank line"),
    ("a\rx\tr\tb", "carriage return"),
    ("a\x00\tr\tb", "control character"),
])
def test_malformed_line_error_names_path_line_and_shows_it(tmp_path, monkeypatch, chunk, line, reason):
    if chunk:
        monkeypatch.setattr(data, "_CHUNK_BYTES", chunk)
    lines = _lines(12)
    lines[8] = line
    folder = _write(tmp_path / "kg", train="\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(folder, cache=False)
    message = str(err.value)
    assert message.startswith(f"{folder / 'train.txt'}:9: ")
    assert reason in message and repr(line) in message


def test_long_bad_line_is_shown_truncated(tmp_path):
    folder = _write(tmp_path / "kg", train="a\tr\tb\n" + "x" * 5000 + "\n")
    with pytest.raises(DataError, match=r"train\.txt:2: .*found 1: 'x+'\.\.\.$") as err:
        load_dataset(folder, cache=False)
    assert len(str(err.value)) < 400


def test_non_utf8_line_error_names_path_and_line(tmp_path):
    folder = _write(tmp_path / "kg", train=b"a\tr\tb\nc\tr\t\xff\xfed\nd\tr\te\n")
    with pytest.raises(DataError, match=r"train\.txt:2: not valid UTF-8 .* at byte 5 of the line"):
        load_dataset(folder, cache=False)


def test_missing_valid_or_test_only_drops_that_split(tmp_path):
    ds = load_dataset(_write(tmp_path / "kg", train="a\tr\tb\n", valid="b\tr\tc\n"), cache=False)
    assert ds.missing_splits == ("test",) and set(ds.splits) == {"train", "valid"}
    assert ds.unseen_counts() == {"valid": 1}
    only_train = load_dataset(_write(tmp_path / "t", train="a\tr\tb"), cache=False)
    assert only_train.missing_splits == ("valid", "test") and only_train.unseen_counts() == {}


def test_missing_train_names_folder_and_lists_it(tmp_path):
    folder = _write(tmp_path / "kg", valid="a\tr\tb\n")
    (folder / "notes.md").write_text("x")
    with pytest.raises(DataError, match=r"kg: no train\.txt \(found: notes\.md, valid\.txt\)"):
        load_dataset(folder)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("content", ["", "\n\n", "\r\n"])
def test_empty_train_is_an_error(tmp_path, content):
    with pytest.raises(DataError, match=r"train\.txt: no triples"):
        load_dataset(_write(tmp_path / "kg", train=content, test="a\tr\tb\n"), cache=False)


def test_dataset_rejects_bad_triples():
    names = np.array(["a", "b"], dtype=object)
    with pytest.raises(DataError, match="outside"):
        KgeDataset("x", names, names[:1], {"train": np.array([[0, 0, 2]])})
    with pytest.raises(DataError, match="int64"):
        KgeDataset("x", names, names[:1], {"train": np.array([[0, 0, 1]], np.int32)})
    with pytest.raises(DataError, match="'train'"):
        KgeDataset("x", names, names[:1], {"test": np.zeros((0, 3), np.int64)})


# ---- cache -------------------------------------------------------------------------------------

@pytest.fixture
def parse_calls(monkeypatch):
    calls = []
    parse = data._parse_file

    def counting(path, *args):
        calls.append(path.name)
        return parse(path, *args)
    monkeypatch.setattr(data, "_parse_file", counting)
    return calls


def test_cache_is_reused_then_invalidated_by_a_changed_file(tmp_path, parse_calls):
    folder = _write(tmp_path / "kg", train="\n".join(_lines(30)), valid="e1\tr1\te2\n",
                    test="e2\tr2\te3\n")
    cache_dir = tmp_path / "cache"
    first = load_dataset(folder, cache_dir=cache_dir)
    assert not first.from_cache and parse_calls == ["train.txt", "valid.txt", "test.txt"]
    assert first.cache_path.parent == cache_dir and first.cache_path.is_file()
    again = load_dataset(folder, cache_dir=cache_dir)
    assert again.from_cache and len(parse_calls) == 3 and _same(first, again)
    assert isinstance(again.entity_ids[0], str)

    with open(folder / "test.txt", "a") as f:
        f.write("e3\trNEW\tzz\n")
    changed = load_dataset(folder, cache_dir=cache_dir)
    assert not changed.from_cache and len(parse_calls) == 6
    assert changed.num_relations == first.num_relations + 1 and changed.splits["test"].shape == (2, 3)
    assert load_dataset(folder, cache_dir=cache_dir).from_cache

    (folder / "valid.txt").unlink()
    no_valid = load_dataset(folder, cache_dir=cache_dir)
    assert not no_valid.from_cache and no_valid.missing_splits == ("valid",)
    assert "valid" not in load_dataset(folder, cache_dir=cache_dir).splits


def test_cache_false_parses_and_writes_nothing(tmp_path, parse_calls):
    folder = _write(tmp_path / "kg", train="a\tr\tb\n")
    for _ in range(2):
        ds = load_dataset(folder, cache=False)
        assert ds.cache_path is None and not ds.from_cache
    assert len(parse_calls) == 2 and sorted(p.name for p in folder.iterdir()) == ["train.txt"]


def test_cache_lives_in_the_user_cache_keyed_by_content(tmp_path, monkeypatch, parse_calls):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = _write(tmp_path / "kg", train="a\tr\tb\n")
    ds = load_dataset(folder)
    assert ds.cache_path.parent == tmp_path / "xdg" / "jaxps" / "parsed"
    assert ds.cache_path.name.startswith("kg-") and ds.folder == folder
    assert sorted(p.name for p in folder.iterdir()) == ["train.txt"]  # nothing beside the data
    copy = _write(tmp_path / "elsewhere" / "kg", train="a\tr\tb\n")
    again = load_dataset(copy)  # the same bytes in another folder: the same cache file
    assert again.from_cache and again.cache_path == ds.cache_path and again.folder == copy
    assert len(parse_calls) == 1
    (copy / "train.txt").write_text("a\tr\tc\n")  # same size: a content key tells them apart
    assert not load_dataset(copy).from_cache and len(parse_calls) == 2


def test_unreadable_cache_is_rebuilt(tmp_path):
    folder = _write(tmp_path / "kg", train="\n".join(_lines(20)))
    first = load_dataset(folder)
    first.cache_path.write_bytes(b"not a zip file")
    rebuilt = load_dataset(folder)
    assert not rebuilt.from_cache and _same(first, rebuilt)
    assert load_dataset(folder).from_cache


# ---- registry ----------------------------------------------------------------------------------

def test_registry_entries_are_complete():
    expected = {"fb15k-237", "wn18rr", "codex-s", "codex-m", "codex-l", "wikidata5m", "umls",
                "kinship", "nations", "yago3-10"}
    assert set(datasets.REGISTRY) == expected
    for key, info in datasets.REGISTRY.items():
        assert info.folder == key and info.urls and all(u.startswith("https://") for u in info.urls)
        assert info.num_entities > 0 and info.num_relations > 0 and min(info.num_triples) > 0
        assert info.sha256 is None or len(info.sha256) == 64
    assert datasets.get("FB15K-237") is datasets.get("fb15k-237")
    assert datasets.get("wnrr").name == "WN18RR"
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: FB15k-237, WN18RR"):
        datasets.get("nope")


def test_resolve_paths_names_and_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXPS_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert datasets.data_home() == tmp_path / "data"
    assert datasets.resolve(tmp_path) == tmp_path
    with pytest.raises(DataError, match=r"--data ./nonexistent: no such folder; pass a folder"):
        datasets.resolve("./nonexistent")
    with pytest.raises(DataError, match=r"--data nonexistent: no such folder, and not a "
                                        r"registered dataset name \(known: fb15k-237"):
        datasets.resolve("nonexistent")
    with pytest.raises(DataError, match=r"YAGO3-10 is not downloaded \(looked in .*shared/data/"
                                        r"yago3-10, .*data/yago3-10\); add --download .*fetch "
                                        r"yago3-10"):
        datasets.resolve("YAGO3-10")
    # A folder in the working folder named like a dataset is not taken for it (./yago3-10 is).
    local = _write(tmp_path / "yago3-10", train="x\tr\ty\n")
    with pytest.raises(DataError, match=r"a folder ./yago3-10 exists here: pass --data ./yago3-10"):
        datasets.resolve("yago3-10")
    assert datasets.resolve("./yago3-10") == Path("./yago3-10")
    folder = _write(tmp_path / "data" / "yago3-10", train="a\tr\tb\n")
    assert datasets.resolve("yago3-10") == folder != local
    _write(tmp_path / "mykg", train="a\tr\tb\n")  # an unregistered bare word: the folder
    assert datasets.resolve("mykg") == Path("mykg")


def test_user_cache_follows_the_platform_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXPS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.user_cache_dir() == tmp_path / "xdg" / "jaxps"
    assert datasets.data_home() == tmp_path / "xdg" / "jaxps" / "datasets"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the real datasets (../shared/data) ---------------------------------------------------------

@needs_shared
def test_fb15k_237_counts_and_unseen_test_entities():
    ds = load_dataset(SHARED / "fb15k-237", cache=False)
    assert (ds.num_entities, ds.num_relations) == (14541, 237)
    assert {s: len(t) for s, t in ds.splits.items()} == {"train": 272115, "valid": 17535, "test": 20466}
    assert ds.unseen_counts() == {"valid": 9, "test": 28}
    assert not any(name.endswith("\r") for name in ds.entity_ids)  # the file has CRLF endings


@needs_shared
@pytest.mark.parametrize("name", ["FB15k-237", "CoDEx-S", "UMLS", "Nations", "Kinship"])
def test_shared_copies_match_the_registry(name, monkeypatch):
    monkeypatch.delenv("JAXPS_DATA", raising=False)
    info = datasets.get(name)
    folder = datasets.resolve(name)
    assert folder == SHARED / info.folder
    assert all(_sha(folder / f"{s}.txt") == info.file_sha256[s] for s in data.SPLITS)
    if name != "FB15k-237":  # loaded above; the small ones take milliseconds
        ds = load_dataset(folder, cache=False)
        assert (ds.num_entities, ds.num_relations) == (info.num_entities, info.num_relations)
        assert tuple(len(ds.splits[s]) for s in data.SPLITS) == info.num_triples


# ---- synthetic graphs --------------------------------------------------------------------------

N, R, T = 2000, 20, 40000


@pytest.fixture(scope="module")
def graph():
    return synthetic.generate(N, R, T, seed=3)


def test_generate_is_deterministic_in_the_seed(graph):
    again = synthetic.generate(N, R, T, seed=3)
    assert all(np.array_equal(graph[s], again[s]) for s in data.SPLITS)
    other = synthetic.generate(N, R, T, seed=4)
    assert not np.array_equal(graph["train"], other["train"])


def test_generate_shapes_ranges_and_disjoint_splits(graph):
    assert {s: t.shape for s, t in graph.items()} == {"train": (36000, 3), "valid": (2000, 3),
                                                      "test": (2000, 3)}
    everything = np.concatenate(list(graph.values()))
    assert everything.dtype == np.int64 and everything.min() == 0
    assert everything[:, [0, 2]].max() < N and everything[:, 1].max() < R
    assert len(np.unique(everything, axis=0)) == T  # no duplicates, within or across splits
    assert not (everything[:, 0] == everything[:, 2]).any()
    train = graph["train"]
    for split in ("valid", "test"):
        held = graph[split]
        assert np.isin(held[:, [0, 2]], train[:, [0, 2]]).all() and np.isin(held[:, 1], train[:, 1]).all()


def test_generate_entity_frequencies_are_skewed(graph):
    occurrences = np.bincount(np.concatenate(list(graph.values()))[:, [0, 2]].ravel(), minlength=N)
    top = np.sort(occurrences)[::-1][:N // 100]
    assert top.sum() / occurrences.sum() > 0.05  # the top 1% of entities: > 5x their share


def test_generate_plants_a_learnable_structure(graph):
    """The most frequent train tail of (head cluster, relation) predicts test tails far above chance."""
    cluster = synthetic.entity_clusters(N, seed=3)
    train, test = graph["train"], graph["test"]
    group = cluster[train[:, 0]] * R + train[:, 1]
    pairs, counts = np.unique(group * N + train[:, 2], return_counts=True)
    order = np.lexsort((-counts, pairs // N))
    best = pairs[order][np.unique(pairs[order] // N, return_index=True)[1]]  # top tail per group
    guess = dict(zip((best // N).tolist(), (best % N).tolist()))
    test_group = cluster[test[:, 0]] * R + test[:, 1]
    hits = np.mean([guess.get(g, -1) == t for g, t in zip(test_group.tolist(), test[:, 2].tolist())])
    constant = np.mean(test[:, 2] == np.bincount(train[:, 2]).argmax())  # best single guess
    assert hits > 0.1 and hits > 5 * constant


def test_default_cluster_count_grows_as_sqrt_up_to_a_cap():
    # Capped so that the planted structure stays within reach of a moderate-rank model.
    assert synthetic.default_num_clusters(2000) == 45
    assert synthetic.default_num_clusters(10 ** 6) == synthetic.MAX_DEFAULT_CLUSTERS == 64
    assert np.bincount(synthetic.entity_clusters(10 ** 5, seed=0)).tolist() == [1563] * 32 + [1562] * 32


def test_write_dataset_round_trips_through_load(tmp_path, graph):
    ds = load_dataset(synthetic.write_dataset(tmp_path / "syn", graph), cache=False)
    entity = np.array([int(name[1:]) for name in ds.entity_ids])
    relation = np.array([int(name[1:]) for name in ds.relation_ids])
    for split in data.SPLITS:
        got = ds.splits[split]
        assert np.array_equal(np.stack((entity[got[:, 0]], relation[got[:, 1]], entity[got[:, 2]]), 1),
                              graph[split])
    assert ds.unseen_counts() == {"valid": 0, "test": 0}


def test_generate_rejects_bad_arguments_and_saturation():
    with pytest.raises(ValueError, match="functional"):
        synthetic.generate(100, 2, 100, seed=0, functional=0.8, noise=0.3)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        synthetic.generate(10 ** 9, 10 ** 2, 100, seed=0)
    with pytest.raises(ValueError, match="saturates"):
        synthetic.generate(5, 1, 1000, seed=0)
