"""KvsAll and 1vsAll training (train/kge/train_types.py): queries and multi-hot labels on a
tiny graph, the loss against a numpy reference, and end-to-end runs that compile once."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import models
from train.kge import synthetic, train_types
from train.kge.config import parse_args
from train.kge.train import make_loss, run

TRIPLES = np.array([[0, 0, 1], [0, 0, 2], [1, 0, 2], [2, 1, 0], [3, 1, 0]])
TINY = ["--dim", "32", "--epochs", "4", "--batch-size", "128", "--eval-every", "2",
        "--max-eval", "200", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "graph"
    return synthetic.write_dataset(folder, synthetic.generate(300, 8, 6000, seed=3))


def grouped(q: train_types.Queries) -> dict:
    return {(int(e), int(r), bool(h)): sorted(q.answers[q.offsets[i]:q.offsets[i + 1]].tolist())
            for i, (e, r, h) in enumerate(zip(q.entity, q.relation, q.head))}


def test_queries_of_a_tiny_graph_reciprocal():
    q = train_types.kvsall_queries(TRIPLES, 2, reciprocal=True, batch_size=2)
    # (s, p, ?) with relation p; (?, p, o) as (o, p + 2, ?).
    assert grouped(q) == {(0, 0, False): [1, 2], (1, 0, False): [2], (2, 1, False): [0],
                          (3, 1, False): [0], (1, 2, False): [0], (2, 2, False): [0, 1],
                          (0, 3, False): [2, 3]}
    assert len(q) == 7 and q.max_answers == 4  # the two largest answer lists: 2 + 2


def test_queries_without_reciprocal_ask_for_the_head():
    q = train_types.kvsall_queries(TRIPLES, 2, reciprocal=False, batch_size=1)
    g = grouped(q)
    assert g[(2, 0, True)] == [0, 1] and g[(0, 1, True)] == [2, 3] and g[(0, 0, False)] == [1, 2]
    assert len(q) == 7 and q.max_answers == 2


@pytest.mark.parametrize("reciprocal", [True, False])
def test_batch_labels_are_the_multi_hot_answers(reciprocal):
    config = parse_args(["--train-type", "KvsAll", "--batch-size", "3", "--label-smoothing",
                         "0.2", "--reciprocal" if reciprocal else "--no-reciprocal"])
    q = train_types.kvsall_queries(TRIPLES, 2, reciprocal=reciprocal, batch_size=3)
    batches = list(train_types.kvsall_batches(q, 4, config, epoch=1, rank=0, size=1))
    assert [b.num_examples for b in batches] == [3, 3, 1]
    seen = 0
    for b in batches:
        d = b.data
        assert d["lq"].shape == d["le"].shape == (q.max_answers,)  # fixed: no recompiles
        labels = np.asarray(train_types.kvsall_labels(d["lq"], d["le"], d["lw"], 3, 4, 0.0))
        smooth = np.asarray(train_types.kvsall_labels(d["lq"], d["le"], d["lw"], 3, 4, 0.2))
        np.testing.assert_allclose(smooth, 0.8 * labels + 0.25, rtol=1e-6)
        for i in range(b.num_examples):
            e = b.keys["entity"][d["e"][i]]
            r = b.keys["relation"][d["r"][i]]
            head = bool(d["head"][i]) if not reciprocal else False
            want = np.zeros(4)
            want[grouped(q)[(int(e), int(r), head)]] = 1
            np.testing.assert_array_equal(labels[i], want)
            seen += 1
        assert d["weight"].tolist() == [1.0] * b.num_examples + [0.0] * (3 - b.num_examples)
        np.testing.assert_array_equal(b.keys["entity"][d["cand"]], np.arange(4))
    assert seen == len(q)


@pytest.mark.parametrize("reciprocal", [True, False])
def test_kvsall_loss_equals_numpy_bce(reciprocal):
    model = models.get_model("complex")
    config = parse_args(["--train-type", "KvsAll", "--batch-size", "4", "--label-smoothing",
                         "0.1", "--reg", "0.05", "--dim", "8",
                         "--reciprocal" if reciprocal else "--no-reciprocal"])
    q = train_types.kvsall_queries(TRIPLES, 2, reciprocal=reciprocal, batch_size=4)
    b = next(train_types.kvsall_batches(q, 4, config, epoch=1, rank=0, size=1))
    rng = np.random.default_rng(0)
    rows = {"entity": rng.standard_normal((4, 8)).astype(np.float32),
            "relation": rng.standard_normal((4, 8)).astype(np.float32)}
    got = float(jax.jit(make_loss(model, config))(rows, b.data))
    d, ent, rel = b.data, rows["entity"], rows["relation"]
    total = 0.0
    for i in range(b.num_examples):
        e, r = ent[d["e"][i]], rel[d["r"][i]]
        er, ei, rr, ri = e[:4], e[4:], r[:4], r[4:]
        # ComplEx Re(<e, r, conj(c)>) for a tail query, Re(<c, r, conj(e)>) for a head query
        scores = np.array([np.sum(er * rr * c[:4] + ei * rr * c[4:] + er * ri * c[4:]
                                  - ei * ri * c[:4]) for c in ent])
        if not reciprocal and d["head"][i]:
            scores = np.array([np.sum(c[:4] * rr * er + c[4:] * rr * ei + c[:4] * ri * ei
                                      - c[4:] * ri * er) for c in ent])
        y = np.zeros(4)
        y[d["le"][(d["lq"] == i) & (d["lw"] > 0)]] = 1
        y = 0.9 * y + 0.25
        total += np.sum(np.log1p(np.exp(scores)) - y * scores)
        total += 0.05 * (np.sum(np.abs(e) ** 3) + np.sum(np.abs(r) ** 3))
    np.testing.assert_allclose(got, total / b.num_examples, rtol=1e-4)


@pytest.mark.parametrize("options", [["--reciprocal"], ["--no-reciprocal", "--model",
                                                          "distmult"]])
def test_kvsall_run_learns_and_compiles_once(options, tiny_graph, tmp_path):
    out = tmp_path / "kvs"
    summary = run(parse_args(["--data", str(tiny_graph), "--out", str(out), "--train-type",
                              "KvsAll", "--label-smoothing", "0.1", "--lr", "0.3", *TINY,
                              *options]))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(x["compiles"] == 1 for x in lines), lines
    assert lines[-1]["loss"] < lines[0]["loss"]
    random_mrr = sum(1 / k for k in range(1, 301)) / 300  # 0.021
    assert summary["test"]["mrr"] > 3 * random_mrr, summary["test"]
    # An example is a query: every unique (s, p) and (p, o) of the training triples once.
    train = np.loadtxt(tiny_graph / "train.txt", dtype=str)
    queries = len({(s, p) for s, p, _ in train}) + len({(p, o) for _, p, o in train})
    assert lines[0]["examples"] == queries


def test_1vsall_is_negatives_of_all_entities(tiny_graph):
    base = ["--data", str(tiny_graph), "--dim", "16", "--epochs", "2", "--batch-size", "256",
            "--max-eval", "100", "--no-progress", "--eval-every", "0"]
    a = run(parse_args(base + ["--train-type", "1vsAll"]))
    b = run(parse_args(base + ["--negatives", "300"]))
    assert a["last_epoch"]["loss"] == b["last_epoch"]["loss"]
    assert a["test"]["mrr"] == b["test"]["mrr"]
    c = run(parse_args(base + ["--negatives", "32"]))
    assert c["last_epoch"]["loss"] != a["last_epoch"]["loss"]


def test_kvsall_two_ranks_with_early_stopping(tiny_graph, tmp_path):
    """KvsAll, a plateau schedule and early stopping under mpiexec -n 2: every rank takes the
    same decisions (a hang or a rank left behind fails the timeout)."""
    from tests.conftest import mpirun

    out = tmp_path / "kvs2"
    res = mpirun(2, ["-m", "train.kge", "--data", str(tiny_graph), "--out", str(out),
                     "--train-type", "KvsAll", "--lr", "0.3", "--lr-schedule", "plateau",
                     "--lr-patience", "0", "--patience", "1", "--min-delta", "0.5", *TINY,
                     "--epochs", "8"],
                 timeout=200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    # --min-delta 0.5: the second validation (epoch 4 of 8) is not better enough: stop.
    assert summary["ranks"] == 2 and summary["epochs_trained"] == 4
    assert summary["stopped"].startswith("early stopping")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["lr"] <= lines[0]["lr"]
