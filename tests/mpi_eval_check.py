"""Evaluates one seeded random problem with comm=COMM_WORLD; rank 0 prints the result as JSON.

Run by tests/test_kge_evaluate.py as `mpiexec -n N python tests/mpi_eval_check.py --seed S`.
Embeddings are small integers, so every score is exact in float32 (the ranks cannot depend on
summation order) and ties are frequent.
"""

import argparse
import json

import numpy as np

from train.kge.evaluate import build_filter, evaluate


def distmult_sp_(s, p, o_all):
    """DistMult (Yang et al., ICLR 2015): (s [B, W], p [B, W], o_all [C, W]) -> [B, C]."""
    return (s * p) @ o_all.T


def distmult__po(s_all, p, o):
    """(s_all [C, W], p [B, W], o [B, W]) -> [B, C]."""
    return (p * o) @ s_all.T


def make_problem(seed: int, num_entities=37, num_relations=3, num_known=160, num_test=41, dim=3):
    """A random graph with integer embeddings in [-2, 2]; test triples are part of `known`."""
    rng = np.random.default_rng(seed)
    known = np.stack(
        [rng.integers(0, num_entities, num_known), rng.integers(0, num_relations, num_known),
         rng.integers(0, num_entities, num_known)], axis=1
    )
    return {
        "entities": rng.integers(-2, 3, (num_entities, dim)).astype(np.float32),
        "relations": rng.integers(-2, 3, (num_relations, dim)).astype(np.float32),
        "known": known,
        "test": known[rng.choice(num_known, num_test, replace=False)],
        "num_entities": num_entities,
        "num_relations": num_relations,
    }


def evaluate_problem(problem: dict, *, batch_size=4, chunk_size=5, comm=None) -> dict:
    """`evaluate` on `problem` with DistMult; per-triple ranks included (as int64 arrays)."""
    entities, relations = problem["entities"], problem["relations"]
    index = build_filter(
        problem["known"], num_entities=problem["num_entities"],
        num_relations=problem["num_relations"],
    )
    return evaluate(
        problem["test"], filter_index=index,
        entity_rows=lambda start, stop: entities[start:stop],
        relation_rows=lambda ids: relations[ids],
        score_sp_=distmult_sp_, score__po=distmult__po,
        batch_size=batch_size, chunk_size=chunk_size, return_ranks=True, comm=comm,
    )


def to_json(result: dict) -> str:
    ranks = {k: v.tolist() for k, v in result["per_triple_ranks"].items()}
    return json.dumps({**result, "per_triple_ranks": ranks}, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = to_json(evaluate_problem(make_problem(args.seed), comm=comm))
    if comm.Get_rank() == 0:
        print(out, flush=True)


if __name__ == "__main__":
    main()
