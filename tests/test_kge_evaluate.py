"""Exact filtered entity ranking (train/kge/evaluate.py): hand-made ranks, a brute-force
oracle, chunked streaming, and bitwise equality on 1, 2 and 3 MPI ranks.

`python tests/test_kge_evaluate.py` times an FB15k-237-sized evaluation instead.
"""

import json
import os
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpi_eval_check as check  # tests/ is on sys.path, as for conftest
from conftest import mpirun
from train.kge.evaluate import (build_filter, count_unseen, describe_filter, evaluate,
                                filter_sets, reciprocal_scorers)
from train.kge.relation_types import relation_types, type_averages, type_counts

_CHECK_SCRIPT = Path(check.__file__).resolve()

# Hand-made scores: score(s, 0, o) = TABLE[s, o]. Rows of entities and relations hold their id,
# and the scorers look the table up, so every score below is exactly what the test says.
nan = float("nan")
TABLE = np.array(
    [  # o:  0    1    2    3    4    5
        [5.0, 3.0, 7.0, 3.0, 3.0, 9.0],  # s = 0
        [0.0, 2.0, 0.0, 0.0, 0.0, 0.0],  # s = 1
        [1.0, 3.0, 1.0, 1.0, 1.0, 1.0],  # s = 2
        [0.0, 8.0, 0.0, 0.0, 0.0, 0.0],  # s = 3
        [0.0, nan, 0.0, 0.0, nan, 0.0],  # s = 4
        [0.0, 1.0, 0.0, 0.0, 2.0, 0.0],  # s = 5
    ],
    np.float32,
)
TRAIN = np.array([[0, 0, 5], [3, 0, 1]])
TEST = np.array([[0, 0, 1], [2, 0, 4], [4, 0, 1]])
# Filtered (?, 0, 1): {0, 3, 4}; (0, 0, ?): {1, 5}; (2, 0, ?): {4}; (?, 0, 4): {2}; (4, 0, ?): {1}.
# Rank = higher + (ties + 1) // 2 + 1, counting unfiltered candidates other than the answer.
EXPECTED_TAIL = [
    4,  # (0,0,?) answer 1 (3): o=0 (5), o=2 (7) higher; o=3, o=4 tie; o=5 (9) filtered
    4,  # (2,0,?) answer 4 (1): o=1 (3) higher; o=0, 2, 3, 5 tie: 1 + 5 // 2 + 1
    6,  # (4,0,?) answer 1 (NaN = -inf): o=0, 2, 3, 5 higher; o=4 (NaN) ties: 4 + 1 + 1
]
EXPECTED_HEAD = [
    2,  # (?,0,1) answer 0 (3): s=2 (3) ties; s=3 (8) filtered; s=4 filtered; s=1, 5 lower
    3,  # (?,0,4) answer 2 (1): s=0 (3), s=5 (2) higher; s=4 (NaN) lowest; no ties
    4,  # (?,0,1) answer 4 (NaN): s=1, 2, 5 higher; s=0, 3 filtered although higher
]


def table_sp_(s, p, o_all):
    return jnp.asarray(TABLE)[s[:, :1].astype(int), o_all[:, 0].astype(int)[None, :]]


def table__po(s_all, p, o):
    return jnp.asarray(TABLE)[s_all[:, 0].astype(int)[None, :], o[:, :1].astype(int)]


def evaluate_table(*, batch_size=2, chunk_size=4, **kwargs):
    ids = np.arange(6, dtype=np.float32)[:, None]
    kwargs.setdefault("filter_index", build_filter(TRAIN, TEST, num_entities=6, num_relations=1))
    return evaluate(
        TEST,
        entity_rows=lambda start, stop: ids[start:stop],
        relation_rows=lambda p: np.zeros((len(p), 1), np.float32),
        score_sp_=table_sp_, score__po=table__po,
        batch_size=batch_size, chunk_size=chunk_size, return_ranks=True, **kwargs,
    )


def test_hand_made_ranks_ties_filter_and_nan():
    result = evaluate_table()
    assert result["per_triple_ranks"]["tail"].tolist() == EXPECTED_TAIL
    assert result["per_triple_ranks"]["head"].tolist() == EXPECTED_HEAD
    assert result["num_triples"] == 3
    assert result["tail"]["mrr"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 6) / 3)
    assert result["head"]["mr"] == 3.0
    assert result["head"]["hits@3"] == pytest.approx(2 / 3)
    both = np.array(EXPECTED_HEAD + EXPECTED_TAIL)
    assert result["mrr"] == pytest.approx(np.mean(1.0 / both))
    assert result["mr"] == both.mean()
    assert (result["hits@1"], result["hits@3"], result["hits@10"]) == (0.0, 2 / 6, 1.0)


@pytest.mark.parametrize("batch_size,chunk_size", [(1, 1), (2, 4), (3, 5), (5, 6), (8, 64)])
def test_table_ranks_do_not_depend_on_batching_or_chunking(batch_size, chunk_size):
    result = evaluate_table(batch_size=batch_size, chunk_size=chunk_size)
    assert result["per_triple_ranks"]["tail"].tolist() == EXPECTED_TAIL
    assert result["per_triple_ranks"]["head"].tolist() == EXPECTED_HEAD


def brute_force_ranks(problem: dict) -> tuple[list[int], list[int]]:
    """One query at a time, from the definition: sets for the filter, float64 scores."""
    e, r = problem["entities"].astype(np.float64), problem["relations"].astype(np.float64)
    known = set(map(tuple, problem["known"].tolist()))
    head, tail = [], []
    for s, p, o in problem["test"].tolist():
        for scores, answer, out, is_known in [
            (e @ (e[s] * r[p]), o, tail, lambda c: (s, p, c) in known),
            (e @ (r[p] * e[o]), s, head, lambda c: (c, p, o) in known),
        ]:
            others = [c for c in range(len(e)) if c != answer and not is_known(c)]
            higher = sum(scores[c] > scores[answer] for c in others)
            ties = sum(scores[c] == scores[answer] for c in others)
            out.append(int(higher + (ties + 1) // 2 + 1))
    return head, tail


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_entities=st.integers(1, 30),
    num_relations=st.integers(1, 3),
    batch_size=st.sampled_from([1, 3, 8]),
    chunk_size=st.sampled_from([1, 7, 64]),
)
def test_matches_brute_force(seed, num_entities, num_relations, batch_size, chunk_size):
    problem = check.make_problem(
        seed, num_entities=num_entities, num_relations=num_relations, num_known=60, num_test=13
    )
    result = check.evaluate_problem(problem, batch_size=batch_size, chunk_size=chunk_size)
    head, tail = brute_force_ranks(problem)
    assert result["per_triple_ranks"]["head"].tolist() == head
    assert result["per_triple_ranks"]["tail"].tolist() == tail
    assert result["mrr"] == np.mean(1.0 / np.array(head + tail))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reciprocal_scorers_rank_heads_with_the_inverse_relation(seed):
    """Relation rows [p | p^-1]: tails are ranked with p, heads (?, p, o) as (o, p^-1, ?)."""
    problem = check.make_problem(seed)
    forward = problem["relations"]
    inverse = np.random.default_rng(seed + 100).integers(-2, 3, forward.shape).astype(np.float32)
    both = np.concatenate([forward, inverse], axis=1)
    scorers = reciprocal_scorers(check.distmult_sp_)
    result = evaluate(
        problem["test"],
        filter_index=build_filter(problem["known"], num_entities=problem["num_entities"],
                                  num_relations=problem["num_relations"]),
        entity_rows=lambda start, stop: problem["entities"][start:stop],
        relation_rows=lambda ids: both[ids], score_sp_=scorers.score_sp_,
        score__po=scorers.score__po, batch_size=4, chunk_size=5, return_ranks=True)
    # DistMult is symmetric: (o, q, s) scores as (s, q, o), so heads ranked with p^-1 = q are
    # the brute-force head ranks of the same graph with relation rows q.
    _, tail = brute_force_ranks(problem)
    head, _ = brute_force_ranks({**problem, "relations": inverse})
    assert result["per_triple_ranks"]["tail"].tolist() == tail
    assert result["per_triple_ranks"]["head"].tolist() == head


@pytest.mark.parametrize("chunk_size", [1, 5, 36, 37, 1000])
def test_chunked_streaming_equals_unchunked(chunk_size):
    problem = check.make_problem(3)  # 37 entities: 5 and 36 do not divide it
    whole = check.evaluate_problem(problem, batch_size=8, chunk_size=37)
    chunked = check.evaluate_problem(problem, batch_size=8, chunk_size=chunk_size)
    assert check.to_json(chunked) == check.to_json(whole)


@pytest.mark.skipif(
    any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK")),
    reason="launches its own mpiexec; not from inside an MPI job",
)
@pytest.mark.parametrize("ranks", [2, 3])
def test_multi_rank_result_is_bitwise_equal(ranks):
    proc = mpirun(ranks, [str(_CHECK_SCRIPT), "--seed", "11"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    distributed = json.loads(proc.stdout.strip().splitlines()[-1])
    local = json.loads(check.to_json(check.evaluate_problem(check.make_problem(11))))
    assert distributed == local


# Unfiltered (an empty filter): every other candidate counts. By hand from TABLE, as above:
# tails (0,0,?) answer 1 (3): 0, 2, 5 higher, 3, 4 tie -> 3 + 1 + 1; (2,0,?) as filtered; (4,0,?)
# as filtered. heads (?,0,1) answer 0 (3): 3 (8) higher, 2 ties -> 3; (?,0,4) as filtered;
# (?,0,1) answer 4 (NaN): all five others higher -> 6.
RAW_TAIL, RAW_HEAD = [5, 4, 6], [3, 3, 6]
# Filtered with train only: (0,0,5) and (3,0,1) drop out; the test triples count again.
TRAIN_TAIL, TRAIN_HEAD = [4, 4, 6], [2, 3, 5]


@pytest.mark.parametrize("mode,tail,head", [("all", EXPECTED_TAIL, EXPECTED_HEAD),
                                            ("train", TRAIN_TAIL, TRAIN_HEAD),
                                            ("none", RAW_TAIL, RAW_HEAD)])
def test_filter_modes_by_hand(mode, tail, head):
    splits = {"train": TRAIN, "test": TEST}
    index = build_filter(*filter_sets(splits, mode), num_entities=6, num_relations=1)
    result = evaluate_table(filter_index=index)
    assert result["per_triple_ranks"]["tail"].tolist() == tail
    assert result["per_triple_ranks"]["head"].tolist() == head


def test_the_answer_never_counts_against_itself():
    # The filter need not hold the evaluated triples: (2, 0, 4) ranks the same without it.
    without = evaluate_table(filter_index=build_filter(TRAIN, TEST[[0, 2]], num_entities=6,
                                                       num_relations=1))
    assert without["per_triple_ranks"]["tail"].tolist() == EXPECTED_TAIL
    assert without["per_triple_ranks"]["head"][1] == EXPECTED_HEAD[1]


def test_input_errors_say_how_to_fix():
    index = build_filter(TRAIN, TEST, num_entities=6, num_relations=1)
    with pytest.raises(ValueError, match=r"triples\[0\] = \[0, 1, 1\] is out of range"):
        evaluate(np.array([[0, 1, 1]]), filter_index=index, entity_rows=None,
                 relation_rows=None, score_sp_=None, score__po=None)
    with pytest.raises(ValueError, match=r"entity_rows\(0, 4\) must return \[4, We\]"):
        evaluate(TEST, filter_index=index, entity_rows=lambda a, b: np.zeros((1, 1)),
                 relation_rows=None, score_sp_=table_sp_, score__po=table__po, chunk_size=4)
    with pytest.raises(ValueError, match="integer array"):
        build_filter(np.zeros((2, 3)), num_entities=6, num_relations=1)


def test_filter_index_matches_sets():
    rng = np.random.default_rng(5)
    known = np.stack([rng.integers(0, 50, 3000), rng.integers(0, 7, 3000),
                      rng.integers(0, 50, 3000)], axis=1)
    index = build_filter(known[:2000], known[1500:], num_entities=50, num_relations=7)
    triples = set(map(tuple, known.tolist()))
    for g, key in enumerate(index.sp.keys.tolist()):
        s, p = divmod(key, 7)
        objects = index.sp.values[index.sp.indptr[g] : index.sp.indptr[g + 1]].tolist()
        assert objects == sorted({o for (s2, p2, o) in triples if (s2, p2) == (s, p)})
    assert index.sp.indptr[-1] == index.po.indptr[-1] == len(triples)


def test_count_unseen():
    train = np.array([[0, 0, 1], [1, 0, 2]])
    test = np.array([[0, 0, 2], [3, 0, 1], [2, 0, 4], [5, 0, 6]])
    assert count_unseen(test, train) == 3


def _benchmark() -> None:
    """FB15k-237-sized: 14,541 entities, 237 relations, 310,116 known, 20,466 test triples;
    ComplEx with dim 256 (128 complex numbers) and random embeddings."""
    num_e, num_r, dim = 14_541, 237, 256
    rng = np.random.default_rng(0)
    known = np.stack([rng.integers(0, num_e, 310_116), rng.integers(0, num_r, 310_116),
                      rng.integers(0, num_e, 310_116)], axis=1)
    test = known[-20_466:]
    entities = rng.normal(size=(num_e, dim)).astype(np.float32)
    relations = rng.normal(size=(num_r, dim)).astype(np.float32)
    half = dim // 2

    def complex_sp_(s, p, o_all):  # Re(<s, p, conj(o)>) as one matmul
        sr, si, pr, pi = s[:, :half], s[:, half:], p[:, :half], p[:, half:]
        return jnp.concatenate([sr * pr - si * pi, sr * pi + si * pr], axis=1) @ o_all.T

    def complex__po(s_all, p, o):
        pr, pi, or_, oi = p[:, :half], p[:, half:], o[:, :half], o[:, half:]
        return jnp.concatenate([pr * or_ + pi * oi, pr * oi - pi * or_], axis=1) @ s_all.T

    t0 = time.perf_counter()
    index = build_filter(known, num_entities=num_e, num_relations=num_r)
    t1 = time.perf_counter()
    for batch_size, chunk_size in [(512, 4096), (1024, 14_541)]:
        t2, cpu = time.perf_counter(), time.process_time()
        result = evaluate(
            test, filter_index=index, entity_rows=lambda a, b: entities[a:b],
            relation_rows=lambda ids: relations[ids], score_sp_=complex_sp_,
            score__po=complex__po, batch_size=batch_size, chunk_size=chunk_size,
        )
        t3, cpu = time.perf_counter(), time.process_time() - cpu
        print(f"build_filter {t1 - t0:.2f} s; evaluate (B={batch_size}, C={chunk_size}) "
              f"{t3 - t2:.2f} s wall, {cpu:.2f} s CPU (incl. compile); mrr {result['mrr']:.5f}")


if __name__ == "__main__":
    _benchmark()


# ----- relation types and per-type metrics ---------------------------------------------------
def test_relation_types_of_a_tiny_graph_by_hand():
    train = np.array([
        [0, 0, 1], [1, 0, 2], [2, 0, 3],               # r0: a chain: 1 tail per head, 1 head per tail
        [0, 1, 1], [0, 1, 2], [0, 1, 3], [4, 1, 5],    # r1: 0 has 3 tails: tph 4/2 = 2, hpt 1
        [1, 2, 0], [2, 2, 0], [3, 2, 0], [3, 2, 0],    # r2: 3 heads -> 0 (a duplicate line): hpt 3
        [0, 3, 1], [0, 3, 2], [1, 3, 1], [1, 3, 2],    # r3: 2 x 2: tph 2, hpt 2
        [0, 4, 1], [0, 4, 2], [3, 4, 4], [5, 4, 0],    # r4: tph 4/3 < 1.5, hpt 1: 1-1
        [0, 5, 1], [0, 5, 2], [3, 5, 4], [3, 5, 5],    # r5: tph 4/2 = 2; hpt 1 -> 1-N
        [0, 6, 1], [0, 6, 2], [3, 6, 4],               # r6: tph 3/2 = 1.5 exactly: not > 1.5
    ])
    tph, hpt = type_averages(train, 8)
    np.testing.assert_allclose(tph[:7], [1, 2, 1, 2, 4 / 3, 2, 1.5])
    np.testing.assert_allclose(hpt[:7], [1, 1, 3, 2, 1, 1, 1])
    assert np.isnan(tph[7]) and np.isnan(hpt[7])  # r7 has no training triple
    types = relation_types(train, 8)
    assert types.tolist() == ["1-1", "1-N", "N-1", "N-N", "1-1", "1-N", "1-1", "none"]
    assert type_counts(types) == {"1-1": 3, "1-N": 2, "N-1": 1, "N-N": 1, "none": 1}


def _complex_problem(seed=4, n=40, r=5):
    """A fixed random ComplEx model and a graph; test triples drawn from the known ones."""
    rng = np.random.default_rng(seed)
    known = np.unique(np.stack([rng.integers(0, n, 400), rng.integers(0, r, 400),
                                rng.integers(0, n, 400)], axis=1), axis=0)
    pick = rng.permutation(len(known))
    return {"E": rng.normal(size=(n, 8)).astype(np.float32),
            "R": rng.normal(size=(r, 8)).astype(np.float32),
            "train": known[pick[60:]], "test": known[pick[:60]], "n": n, "r": r}


def _numpy_complex_ranks(P, filter_triples):
    """Ranks from plain numpy: ComplEx scores in float64, a Python set as the filter."""
    E, R = P["E"].astype(np.float64), P["R"].astype(np.float64)
    Ec = E[:, :4] + 1j * E[:, 4:]
    Rc = R[:, :4] + 1j * R[:, 4:]
    known = set(map(tuple, filter_triples.tolist()))
    head, tail = [], []
    for s, p, o in P["test"].tolist():
        tails = np.real((Ec[s] * Rc[p]) @ np.conj(Ec).T)
        heads = np.real((Ec * Rc[p]) @ np.conj(Ec[o]))
        for scores, answer, out, is_known in [
            (tails, o, tail, lambda c: (s, p, c) in known),
            (heads, s, head, lambda c: (c, p, o) in known),
        ]:
            others = [c for c in range(P["n"]) if c != answer and not is_known(c)]
            higher = sum(scores[c] > scores[answer] + 1e-9 for c in others)
            ties = sum(abs(scores[c] - scores[answer]) <= 1e-9 for c in others)
            out.append(int(higher + (ties + 1) // 2 + 1))
    return np.array(head), np.array(tail)


def _evaluate_complex(P, mode):
    import models

    model = models.get_model("complex")
    splits = {"train": P["train"], "test": P["test"]}
    return evaluate(P["test"], filter_index=build_filter(*filter_sets(splits, mode),
                                                         num_entities=P["n"], num_relations=P["r"]),
                    entity_rows=lambda a, b: P["E"][a:b], relation_rows=lambda ids: P["R"][ids],
                    score_sp_=model.score_sp_, score__po=model.score__po, batch_size=16,
                    chunk_size=16, return_ranks=True,
                    relation_groups=relation_types(P["train"], P["r"]))


def test_unfiltered_ranks_are_never_better_than_filtered():
    P = _complex_problem()
    ranks = {m: _evaluate_complex(P, m)["per_triple_ranks"] for m in ("none", "train", "all")}
    for d in ("head", "tail"):
        assert (ranks["none"][d] >= ranks["train"][d]).all()
        assert (ranks["train"][d] >= ranks["all"][d]).all()
        assert (ranks["none"][d] > ranks["all"][d]).any()  # the filter matters on this graph


@pytest.mark.parametrize("mode", ["none", "all"])
def test_metrics_per_type_and_direction_rescored_with_numpy(mode):
    P = _complex_problem()
    result = _evaluate_complex(P, mode)
    known = np.concatenate([P["train"], P["test"]]) if mode == "all" else P["train"][:0]
    head, tail = _numpy_complex_ranks(P, known)
    assert result["per_triple_ranks"]["head"].tolist() == head.tolist()
    assert result["per_triple_ranks"]["tail"].tolist() == tail.tolist()
    types = relation_types(P["train"], P["r"])[P["test"][:, 1]]
    assert set(result["by_relation_type"]) == set(types.tolist())
    for kind, m in result["by_relation_type"].items():
        mask = types == kind
        both = np.concatenate([head[mask], tail[mask]])
        assert m["num_triples"] == mask.sum()
        assert m["mrr"] == pytest.approx(np.mean(1 / both), abs=1e-6)
        assert m["hits@10"] == pytest.approx(np.mean(both <= 10), abs=1e-6)
        assert m["head"]["mrr"] == pytest.approx(np.mean(1 / head[mask]), abs=1e-6)
        assert m["tail"]["mr"] == pytest.approx(np.mean(tail[mask]), abs=1e-6)
    assert result["head"]["mrr"] == pytest.approx(np.mean(1 / head), abs=1e-6)
    assert result["tail"]["hits@1"] == pytest.approx(np.mean(tail <= 1), abs=1e-6)


def test_describe_filter():
    assert describe_filter("all") == "filtered against train+valid+test"
    assert describe_filter("train") == "filtered against train"
    assert describe_filter("none") == "unfiltered (raw ranks)"
    with pytest.raises(ValueError, match="unknown filter 'x'; valid: all, train, none"):
        filter_sets({}, "x")
