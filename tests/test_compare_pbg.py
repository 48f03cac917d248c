"""train/compare_pbg.py without PyTorch-BigGraph: config file, log parsing, PBG scoring."""

import json

import numpy as np
import pytest

from train import compare_pbg as cp

PBG_LOG = """\
2026-11-24 07:05:18,210   [Trainer-0] Initializing global model...
2026-11-24 07:05:24,169   [Trainer-0] Starting epoch 1 / 2, edge path 1 / 1, edge chunk 1 / 1
2026-11-24 07:05:38,349   [Trainer-0] ( 0 , 0 ): bucket 1 / 1 : Processed 272115 edges in 14.13 s ( 0.019 M/sec ); io: 0.05 s ( 143.27 MB/sec )
2026-11-24 07:05:38,349   [Trainer-0] ( 0 , 0 ): loss:  5.09417 , violators_lhs:  13.409 , violators_rhs:  12.2901 , count:  272115
2026-11-24 07:05:38,349   [Trainer-0] Finished epoch 1 / 2, edge path 1 / 1, edge chunk 1 / 1
2026-11-24 07:05:38,415   [Trainer-0] Starting epoch 2 / 2, edge path 1 / 1, edge chunk 1 / 1
2026-11-24 07:05:50,506   [Trainer-0] ( 0 , 0 ): bucket 1 / 1 : Processed 272115 edges in 12.07 s ( 0.023 M/sec ); io: 0.02 s ( 293.38 MB/sec )
2026-11-24 07:05:50,507   [Trainer-0] ( 0 , 0 ): loss:  2.02377 , violators_lhs:  2.0645 , violators_rhs:  0.84235 , count:  272115
2026-11-24 07:05:50,507   [Trainer-0] Finished epoch 2 / 2, edge path 1 / 1, edge chunk 1 / 1
"""


def test_pbg_config_source_is_the_fb15k_example_at_comparison_sizes(tmp_path):
    cfg = cp.pbg_config(entity_path="d", edge_paths=["d/train"], checkpoint_path="m", dim=128,
                        epochs=3, workers=2)
    path = cp.write_pbg_config(tmp_path / "c" / "config.py", cfg)
    ns = {}
    exec(path.read_text(), ns)
    got = ns["get_torchbiggraph_config"]()
    assert got == cfg
    assert got["relations"] == [{"name": "all_edges", "lhs": "all", "rhs": "all",
                                 "operator": "complex_diagonal"}]
    assert (got["dimension"], got["batch_size"], got["num_batch_negs"],
            got["num_uniform_negs"], got["loss_fn"], got["lr"], got["workers"],
            got["num_epochs"], got["dynamic_relations"]) == (
        128, 1000, 50, 50, "softmax", 0.1, 2, 3, True)


def test_parse_pbg_log():
    epochs = cp.parse_pbg_log(PBG_LOG)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[0]["seconds"] == pytest.approx(14.13)
    assert epochs[1]["seconds"] == pytest.approx(12.07)
    assert epochs[1]["epoch_seconds"] == pytest.approx(12.092, abs=1e-3)
    assert epochs[1]["loss"] == pytest.approx(2.02377)
    assert epochs[1]["edges"] == 272115
    assert cp.median_after_first([e["seconds"] for e in epochs]) == pytest.approx(12.07)


def test_epoch_cpu_from_marks():
    pbg = [("x Starting epoch 1 / 2", 0, 1.0), ("x Finished epoch 1 / 2", 0, 4.0),
           ("x Starting epoch 2 / 2", 0, 4.5), ("x Finished epoch 2 / 2", 0, 7.0)]
    assert cp.pbg_epoch_cpu(pbg) == {1: 3.0, 2: 2.5}
    jx = [("epoch   1/3  loss", 0, 10.0), ("epoch   2/3  loss", 0, 13.0),
          ("epoch   3/3  loss", 0, 15.5)]
    assert all(cp.JAXPS_MARKER.search(line) for line, _, _ in jx)
    assert cp.jaxps_epoch_cpu(jx) == {2: 3.0, 3: 2.5}


def test_tree_cpu_seconds_of_this_process():
    import os
    cpu = cp.tree_cpu_seconds(os.getpid())
    if cpu is None:
        pytest.skip("no /proc")
    assert cpu >= 0


def test_map_triples(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("/m/a\t/r/x\t/m/b\n/m/b\t/r/y\t/m/a\n")
    got = cp.map_triples(f, {"/m/a": 1, "/m/b": 0}, {"/r/x": 0, "/r/y": 1})
    assert got.tolist() == [[1, 0, 0], [0, 1, 1]]


def _pbg_scores_numpy(entity, ops, s, r, o):
    """PBG's dynamic-relation scores: tail candidates dot(g_r(s), o'); head dot(s', h_r(o))."""
    def op(x, re, im):
        h = x.shape[-1] // 2
        xr, xi = x[:h], x[h:]
        return np.concatenate([xr * re - xi * im, xr * im + xi * re])
    tail = entity @ op(entity[s], ops["lhs_real"][r], ops["lhs_imag"][r])
    head = entity @ op(entity[o], ops["rhs_real"][r], ops["rhs_imag"][r])
    return head, tail


def test_pbg_filtered_metrics_match_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    n, nr, dim = 30, 4, 8
    names = [f"/m/e{i}" for i in range(n)]
    rels = [f"/r/{i}" for i in range(nr)]
    (tmp_path / "entity_names_all_0.json").write_text(json.dumps(names))
    (tmp_path / "dynamic_rel_names.json").write_text(json.dumps(rels))
    triples = {}
    for split, k in (("train", 120), ("valid", 25), ("test", 25)):
        t = np.stack([rng.integers(0, n, k), rng.integers(0, nr, k), rng.integers(0, n, k)], 1)
        triples[split] = t
        (tmp_path / f"{split}.txt").write_text(
            "".join(f"{names[s]}\t{rels[r]}\t{names[o]}\n" for s, r, o in t))
    entity = rng.normal(size=(n, dim)).astype(np.float32)
    ops = {f"{s}_{c}": rng.normal(size=(nr, dim // 2)).astype(np.float32)
           for s in ("lhs", "rhs") for c in ("real", "imag")}
    np.savez(tmp_path / "emb.npz", entity=entity, version=1, **ops)

    got = cp.pbg_filtered_metrics(tmp_path / "emb.npz", tmp_path, tmp_path)

    known = {tuple(x) for t in triples.values() for x in t.tolist()}
    rr = []
    for s, r, o in triples["valid"].tolist():
        head, tail = _pbg_scores_numpy(entity, ops, s, r, o)
        for scores, ans, other in ((tail, o, lambda c: (s, r, c)), (head, s, lambda c: (c, r, o))):
            cand = [c for c in range(n) if c == ans or other(c) not in known]
            higher = sum(scores[c] > scores[ans] + 1e-5 for c in cand if c != ans)
            rr.append(1.0 / (higher + 1))
    assert got["num_triples"] == len(triples["valid"])
    assert got["mrr"] == pytest.approx(np.mean(rr), abs=1e-6)
