"""Prediction from a finished run's exports (train.kge.predict) and --init-embeddings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from train.kge import predict, synthetic
from train.kge.config import parse_args
from train.kge.data import DataError, load_dataset
from train.kge.train import run

FAST = ["--dim", "16", "--epochs", "2", "--batch-size", "256", "--negatives", "64",
        "--max-eval", "100", "--eval-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pred") / "graph"
    return synthetic.write_dataset(folder, synthetic.generate(120, 4, 3000, seed=2))


@pytest.fixture(scope="module", params=[True, False], ids=["reciprocal", "plain"])
def finished(request, graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    flag = "--reciprocal" if request.param else "--no-reciprocal"
    summary = run(parse_args(["--data", str(graph), "--out", str(out), flag, *FAST]))
    return out, summary


def _complex(x):
    return x[:, :8] + 1j * x[:, 8:]


def numpy_scores(out, head, relation, tail):
    """ComplEx scores from the exported files with plain numpy (float64)."""
    e = _complex(np.load(out / "entity_embeddings.npy").astype(np.float64))
    r = _complex(np.load(out / "relation_embeddings.npy").astype(np.float64))
    if tail is None:
        return np.real((e[head] * r[relation]) @ np.conj(e).T)
    inverse = out / "reciprocal_relation_embeddings.npy"
    if inverse.is_file():  # (?, r, t) as (t, r^-1, ?)
        ri = _complex(np.load(inverse).astype(np.float64))
        return np.real((e[tail] * ri[relation]) @ np.conj(e).T)
    return np.real((e * r[relation]) @ np.conj(e[tail]))


def test_top_tails_and_heads_match_numpy(finished):
    out, _ = finished
    loaded = predict.load_run(out)
    for head, tail in [(5, None), (None, 7)]:
        result = predict.predict(loaded, head=None if head is None else str(head),
                                 relation="1", tail=None if tail is None else str(tail), top=10)
        expected = np.argsort(-numpy_scores(out, head, 1, tail), kind="stable")[:10]
        assert [t["id"] for t in result["top"]] == expected.tolist()
        assert result["predicting"] == ("tail" if tail is None else "head")


def test_names_and_ids_agree_and_unknown_names_say_so(finished):
    out, _ = finished
    loaded = predict.load_run(out)
    names, relations = loaded.entity_names, loaded.relation_names
    by_id = predict.predict(loaded, head="3", relation="2", tail=None)
    by_name = predict.predict(loaded, head=names[3], relation=relations[2], tail=None)
    assert by_id == by_name and by_id["query"] == [names[3], relations[2], "?"]
    with pytest.raises(DataError, match=r"unknown relation 'r9x': neither a name .* an id in "
                                        r"\[0, 4\)"):
        predict.predict(loaded, head="3", relation="r9x", tail=None)
    with pytest.raises(DataError, match="give --head"):
        predict.predict(loaded, head=None, relation="0", tail=None)


def test_filter_leaves_out_known_triples_and_ranks_the_answer(finished, graph):
    out, _ = finished
    loaded = predict.load_run(out)
    ds = load_dataset(graph)
    known = np.concatenate(list(ds.splits.values()))
    s, p, o = (int(x) for x in ds.splits["test"][0])
    result = predict.predict(loaded, head=str(s), relation=str(p), tail=str(o), top=200,
                             filtered=True)
    truth = set(known[(known[:, 0] == s) & (known[:, 1] == p), 2].tolist())
    listed = {t["id"] for t in result["top"]}
    assert not (listed & (truth - {o})) and o in listed
    assert result["known_not_ranked"] == len(truth - {o})
    scores = numpy_scores(out, s, p, None)
    others = np.array([c for c in range(ds.num_entities) if c not in truth])
    higher = int(np.sum(scores[others] > scores[o] + 1e-5))
    ties = int(np.sum(np.abs(scores[others] - scores[o]) <= 1e-5))
    assert result["answer"]["rank"] == higher + (ties + 1) // 2 + 1


def test_cli_prints_the_table(finished, capsys):
    out, _ = finished
    predict.main(["--run", str(out), "--head", "0", "--relation", "0", "--top", "3"])
    printed = capsys.readouterr().out
    assert "top 3 tails, unfiltered" in printed and len(printed.splitlines()) == 6
    with pytest.raises(SystemExit) as e:
        predict.main(["--run", str(out / "nothing"), "--head", "0", "--relation", "0"])
    assert e.value.code == 1 and "no summary.json" in capsys.readouterr().err


def test_init_embeddings_starts_from_the_export_by_name(finished, graph, tmp_path):
    out, summary = finished
    reciprocal = summary["config"]["reciprocal"]
    # The export, its rows and id lines shuffled the same way: rows are matched by name.
    shuffled = tmp_path / "shuffled"
    shutil.copytree(out, shuffled, ignore=shutil.ignore_patterns("checkpoints"))
    for table in ("entity", "relation"):
        ids = (out / f"{table}_ids.txt").read_text().splitlines()
        perm = np.random.default_rng(0).permutation(len(ids))
        (shuffled / f"{table}_ids.txt").write_text("".join(ids[i] + "\n" for i in perm))
        for prefix in ("", "reciprocal_"):
            f = out / f"{prefix}{table}_embeddings.npy"
            if f.is_file():
                np.save(shuffled / f.name, np.load(f)[perm])
    flag = "--reciprocal" if reciprocal else "--no-reciprocal"
    again = tmp_path / "again"
    args = ["--data", str(graph), "--out", str(again), flag, "--init-embeddings", str(shuffled),
            *FAST]
    args[args.index("--epochs") + 1] = "1"
    second = run(parse_args([*args, "--lr", "1e-9"]))  # a rate too small to move the rows
    for f in ("entity_embeddings.npy", "relation_embeddings.npy"):
        np.testing.assert_allclose(np.load(again / f), np.load(out / f), atol=1e-6)
    assert second["test"]["mrr"] == pytest.approx(summary["test"]["mrr"], abs=1e-3)


def test_init_embeddings_errors_say_what_to_fix(finished, graph, tmp_path):
    out, summary = finished
    base = ["--data", str(graph), "--init-embeddings", str(out), *FAST]
    flag = "--reciprocal" if summary["config"]["reciprocal"] else "--no-reciprocal"
    with pytest.raises(DataError, match=r"entity_embeddings.npy has rows of width 16, this run "
                                        r"needs 32 \(--model complex --dim 32\)"):
        run(parse_args([*base, flag, "--dim", "32"]))
    if not summary["config"]["reciprocal"]:
        with pytest.raises(DataError, match=r"no reciprocal_relation_embeddings.npy \(the run "
                                            r"was trained without reciprocal relations"):
            run(parse_args([*base, "--reciprocal"]))
    partial = tmp_path / "partial"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("checkpoints"))
    ids = (partial / "entity_ids.txt").read_text().splitlines()
    (partial / "entity_ids.txt").write_text("".join(f"x{n}\n" for n in ids))
    with pytest.raises(DataError, match=r"120 of this dataset's 120 names are not in"):
        run(parse_args(["--data", str(graph), "--init-embeddings", str(partial), flag, *FAST]))


def test_a_folder_that_is_not_a_kge_run_is_a_clear_error(tmp_path, capsys):
    """--run of a train.mf run (its summary.json has a config without a model) failed with a
    raw KeyError: 'model'; a summary.json that is not JSON with a JSONDecodeError."""
    mf = tmp_path / "mf"
    mf.mkdir()
    (mf / "summary.json").write_text(json.dumps({"valid": None, "test": {"rmse": 0.98},
                                                 "config": {"dim": 8, "optimizer": "adagrad",
                                                            "schedule": "shuffled"}}))
    with pytest.raises(SystemExit) as e:
        predict.main(["--run", str(mf), "--head", "1", "--relation", "0"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"--run {mf}: summary.json has no train.kge config" in err and "train.mf" in err
    (mf / "summary.json").write_text('{"config": {"model": "complex"')  # cut short
    with pytest.raises(DataError, match=r"summary.json is not JSON"):
        predict.load_run(mf)
