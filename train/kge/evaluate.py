"""Exact filtered link-prediction evaluation (entity ranking), LibKGE's protocol.

Every triple (s, p, o) gives two queries: "tail" ranks all entities as the object of (s, p, ?),
"head" ranks all entities as the subject of (?, p, o). A candidate is *filtered* (not ranked)
when it makes a known true triple of `filter_index`: train + valid + test for the standard
filtered metrics (LibKGE's ``filter_with_test``), train only, or nothing (an empty index: the
raw, unfiltered metrics). The answer itself is never counted against itself, whether or not
the index holds it.

Rank of the true answer, per query, from two counts over the unfiltered candidates other than
the answer itself: `higher` (score strictly greater than the answer's) and `ties` (equal score):

    rank = higher + (ties + 1) // 2 + 1                       (1-based)

This is LibKGE's default `entity_ranking.tie_handling: rounded_mean_rank` (uma-pi1/kge,
kge/job/entity_ranking.py, `_get_ranks` and `_get_ranks_and_num_ties`: `rank + num_ties // 2`
with 0-based `rank` = #greater and `num_ties` = #equal *including the answer itself*, made
1-based by `_compute_metrics`). It is the mean rank of the tied group rounded
up: a unique score gives `higher + 1`, one tied competitor gives `higher + 2`.
As in LibKGE, NaN scores count as -inf (for candidates and for the answer).

Metrics per direction ("head", "tail") and over all 2n queries (LibKGE's "both", the top
level of the result): MRR, MR, Hits@k; with ``relation_groups`` (e.g. `relation_types`' 1-1,
1-N, N-1, N-N) also per group of relations, each with its own head/tail split.
Entities unseen in training are ranked like any other
(see `count_unseen` to report how many test triples have them).

Entity rows are streamed in chunks from `entity_rows(start, stop)`, so no rank needs the whole
table at once. With `comm`, rank r ranks a contiguous slice of the triples; the int64 ranks are
gathered to every rank and all metrics are computed from the full array in triple order, so
the result is bitwise the same on any number of ranks.
"""

import functools
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EntityRows = Callable[[int, int], np.ndarray]  # (start, stop) -> [stop - start, We]
RelationRows = Callable[[np.ndarray], np.ndarray]  # ids [B] -> [B, Wr]


class _Csr(NamedTuple):
    """Known answers grouped by query key (entity * num_relations + relation)."""
    keys: np.ndarray    # int64 [G], sorted, unique
    indptr: np.ndarray  # int64 [G + 1]; answers of keys[g] are values[indptr[g]:indptr[g + 1]]
    values: np.ndarray  # int32 [nnz], sorted within each group, unique


class FilterIndex(NamedTuple):
    """Known true triples, for filtering. Build once with `build_filter`; immutable."""
    sp: _Csr  # (s, p) -> known objects
    po: _Csr  # (o, p) -> known subjects
    num_entities: int
    num_relations: int


def build_filter(*triple_sets: np.ndarray, num_entities: int, num_relations: int) -> FilterIndex:
    """Indexes the union of `triple_sets` (each int [k, 3] of (s, p, o)), e.g. train, valid, test;
    none at all gives the empty index of unfiltered ranking.

    Vectorized sort + group: FB15k-237 (310k triples) takes well under a second.
    """
    if not 0 < num_entities < 2**31 or not 0 < num_relations < 2**31:
        raise ValueError(
            f"num_entities and num_relations must be in [1, 2**31), got {num_entities}, "
            f"{num_relations}."
        )
    known = np.concatenate(
        [_check_triples(t, num_entities, num_relations, f"triple_sets[{i}]")
         for i, t in enumerate(triple_sets)] or [np.zeros((0, 3), np.int64)]
    )
    s, p, o = known.T
    return FilterIndex(
        _csr(s * num_relations + p, o), _csr(o * num_relations + p, s), num_entities, num_relations
    )


FILTER_SPLITS = {"all": ("train", "valid", "test"), "train": ("train",), "none": ()}


def filter_sets(splits: Mapping[str, np.ndarray], mode: str) -> list[np.ndarray]:
    """The triple sets for `build_filter` of ``--filter mode``: "all" (train + valid + test,
    the standard filtered metrics), "train", or "none" (raw ranks); absent splits are skipped."""
    if mode not in FILTER_SPLITS:
        raise ValueError(f"unknown filter {mode!r}; valid: {', '.join(FILTER_SPLITS)}")
    return [splits[s] for s in FILTER_SPLITS[mode] if s in splits]


def describe_filter(mode: str) -> str:
    """How the ranks were filtered, in words for the console ("filtered against train+valid+test")."""
    return ("unfiltered (raw ranks)" if mode == "none" else
            "filtered against " + "+".join(FILTER_SPLITS[mode]))


class Scorers(NamedTuple):
    """The two all-candidates scoring modes `evaluate` ranks with (pure JAX functions)."""
    score_sp_: Callable  # (s [B, We], p [B, Wr], o_all [C, We]) -> [B, C]
    score__po: Callable  # (s_all [C, We], p [B, Wr], o [B, We]) -> [B, C]


def reciprocal_scorers(score_sp_: Callable) -> Scorers:
    """Scorers of a reciprocal-relations model (LibKGE's `reciprocal_relations_model`).

    Every relation p has a second embedding p^-1 for the inverse direction, and head queries
    (?, p, o) are answered as tail queries (o, p^-1, ?) of the base model. Relation rows are
    [p | p^-1] (width 2 Wr, e.g. `relation_rows` returning both rows side by side); the base
    model's `score_sp_` scores both directions. Build the pair once and pass the same objects
    to every `evaluate` call, so its compiled kernels are reused.
    """

    def forward(s, p, o_all):
        return score_sp_(s, p[:, : p.shape[1] // 2], o_all)

    def inverse(s_all, p, o):
        return score_sp_(o, p[:, p.shape[1] // 2 :], s_all)

    return Scorers(forward, inverse)


def count_unseen(test: np.ndarray, train: np.ndarray) -> int:
    """Number of `test` triples whose subject or object occurs in no `train` triple."""
    test, train = np.asarray(test), np.asarray(train)
    seen = np.unique(train[:, [0, 2]])
    return int(np.count_nonzero(~np.isin(test[:, [0, 2]], seen).all(axis=1)))


def evaluate(
    triples: np.ndarray,
    *,
    filter_index: FilterIndex,
    entity_rows: EntityRows,
    relation_rows: RelationRows,
    score_sp_: Callable,
    score__po: Callable,
    batch_size: int = 512,
    chunk_size: int = 4096,
    hits_at: Sequence[int] = (1, 3, 10),
    return_ranks: bool = False,
    relation_groups: np.ndarray | None = None,
    comm=None,
) -> dict:
    """MRR, MR and Hits@k of `triples` (int [n, 3] of (s, p, o)), filtered by `filter_index`.

    Args:
      triples: the triples to rank (the same full array on every rank).
      filter_index: the known triples not to rank, `build_filter(train, valid, test, ...)`
        for the filtered metrics; `build_filter(num_entities=..., num_relations=...)` (empty)
        for the raw ones.
      entity_rows: `(start, stop) -> [stop - start, We]` rows of entities [start, stop).
      relation_rows: `ids [B] -> [B, Wr]` relation rows.
      score_sp_: pure JAX `(s [B, We], p [B, Wr], o_all [C, We]) -> [B, C]`.
      score__po: pure JAX `(s_all [C, We], p [B, Wr], o [B, We]) -> [B, C]`.
        Both are jitted here with static shapes [batch_size, chunk_size]; pass the same
        function objects on every call so the compiled kernels are reused.
      batch_size, chunk_size: queries per step, entities per streamed chunk (memory ~ B * C).
      hits_at: the k of the Hits@k metrics.
      return_ranks: also return `per_triple_ranks = {"head": int64 [n], "tail": int64 [n]}`.
      relation_groups: str [num_relations], a group name per relation (`relation_types`);
        adds `"by_relation_type": {group: {metrics, "head", "tail", "num_triples",
        "relations"}}` for the groups that occur in `triples`.
      comm: an mpi4py communicator; collective: every rank of it must call with the same
        `triples`. None evaluates everything in this process.

    Returns:
      `{"mrr", "mr", "hits@k"...: over all 2n queries, "head": {...}, "tail": {...},
      "num_triples": n}` with plain floats.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}.")
    triples = _check_triples(
        triples, filter_index.num_entities, filter_index.num_relations, "triples"
    )
    n = len(triples)
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    if comm is not None and len(set(comm.allgather(n))) != 1:
        raise ValueError("evaluate(comm=...) needs the same `triples` array on every rank.")
    if n == 0:
        raise ValueError("evaluate: `triples` is empty; nothing to rank.")
    lo, hi = rank * n // size, (rank + 1) * n // size
    ranks = _rank_slice(
        triples[lo:hi], filter_index, entity_rows, relation_rows,
        (score_sp_, score__po), batch_size, chunk_size,
    )  # int64 [hi - lo, 2]: (head, tail)
    if comm is not None:
        everything = np.empty((n, 2), np.int64)
        counts = [2 * ((r + 1) * n // size - r * n // size) for r in range(size)]
        comm.Allgatherv(ranks, [everything, counts])
        ranks = everything
    head, tail = ranks[:, 0], ranks[:, 1]
    result = {
        **_metrics(np.concatenate([head, tail]), hits_at),
        "head": _metrics(head, hits_at),
        "tail": _metrics(tail, hits_at),
        "num_triples": n,
    }
    if relation_groups is not None:
        result["by_relation_type"] = _by_group(head, tail, triples[:, 1],
                                               np.asarray(relation_groups), hits_at)
    if return_ranks:
        result["per_triple_ranks"] = {"head": head.copy(), "tail": tail.copy()}
    return result


def _by_group(head, tail, relations, groups, hits_at) -> dict:
    """Metrics of the queries of each relation group, in the groups' sorted order."""
    if groups.shape != (groups.shape[0],) or relations.max() >= len(groups):
        raise ValueError(f"relation_groups must name a group for each of the relations, got "
                         f"shape {groups.shape} for relation ids up to {relations.max()}.")
    of_triple = groups[relations]
    out = {}
    for g in sorted(set(of_triple.tolist())):
        mask = of_triple == g
        h, t = head[mask], tail[mask]
        out[g] = {**_metrics(np.concatenate([h, t]), hits_at), "head": _metrics(h, hits_at),
                  "tail": _metrics(t, hits_at), "num_triples": int(mask.sum()),
                  "relations": int(np.count_nonzero(groups == g))}
    return out


def _metrics(ranks: np.ndarray, hits_at: Sequence[int]) -> dict:
    """MRR, MR, Hits@k of 1-based int64 ranks, computed in one fixed order."""
    m = len(ranks)
    out = {"mrr": float(np.sum(1.0 / ranks) / m), "mr": int(ranks.sum()) / m}
    out.update({f"hits@{k}": int(np.count_nonzero(ranks <= k)) / m for k in hits_at})
    return out


def _check_triples(t, num_entities: int, num_relations: int, name: str) -> np.ndarray:
    t = np.asarray(t)
    if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer array [k, 3] of (s, p, o), got {t.dtype} {t.shape}."
        )
    t = t.astype(np.int64)
    bad = (t < 0).any(axis=1) | (t[:, [0, 2]] >= num_entities).any(axis=1)
    bad |= t[:, 1] >= num_relations
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{i}] = {t[i].tolist()} is out of range: entities must be in "
            f"[0, {num_entities}), relations in [0, {num_relations})."
        )
    return t


def _csr(keys: np.ndarray, values: np.ndarray) -> _Csr:
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    keep = np.ones(len(keys), bool)
    keep[1:] = (keys[1:] != keys[:-1]) | (values[1:] != values[:-1])
    keys, values = keys[keep], values[keep]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])[: len(keys)]
    indptr = np.append(starts, len(keys)).astype(np.int64)
    return _Csr(keys[starts], indptr, values.astype(np.int32))


def _known(csr: _Csr, qkeys: np.ndarray, answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, candidates) sorted by candidate: every known answer of every query key, and
    each query's own `answers` (a pair may appear twice; it is excluded once either way)."""
    own = (np.arange(len(qkeys)), answers.astype(np.int32))
    if not len(csr.keys):
        order = np.argsort(own[1], kind="stable")
        return own[0][order], own[1][order]
    pos = np.minimum(np.searchsorted(csr.keys, qkeys), len(csr.keys) - 1)
    found = csr.keys[pos] == qkeys
    start = np.where(found, csr.indptr[pos], 0)
    length = np.where(found, csr.indptr[pos + 1] - start, 0)
    rows = np.repeat(np.arange(len(qkeys)), length)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(length) - length, length)
    known = csr.values[np.repeat(start, length) + offsets]
    rows, known = np.concatenate([rows, own[0]]), np.concatenate([known, own[1]])
    # Sorted by candidate, each entity chunk's share of the pairs is one contiguous run.
    order = np.argsort(known, kind="stable")
    return rows[order], known[order]


def _read_entities(entity_rows: EntityRows, start: int, stop: int) -> np.ndarray:
    rows = np.asarray(entity_rows(start, stop))
    if rows.ndim != 2 or rows.shape[0] != stop - start:
        raise ValueError(
            f"entity_rows({start}, {stop}) must return [{stop - start}, We] rows, got shape "
            f"{rows.shape}."
        )
    return rows


def _query_entity_rows(entity_rows: EntityRows, num_entities: int, chunk: int, ids: np.ndarray):
    """Rows of the sorted unique `ids`, read with one pass over the chunks that hold any."""
    out = None
    for start in range(0, num_entities, chunk):
        stop = min(start + chunk, num_entities)
        a, b = np.searchsorted(ids, [start, stop])
        if a < b:
            rows = _read_entities(entity_rows, start, stop)
            out = np.empty((len(ids), rows.shape[1]), rows.dtype) if out is None else out
            out[a:b] = rows[ids[a:b] - start]
    return out


def _rank_slice(triples, index, entity_rows, relation_rows, scorers, batch, chunk):
    """int64 [len(triples), 2] (head, tail) filtered ranks of this rank's triples."""
    out = np.zeros((len(triples), 2), np.int64)
    if len(triples) == 0:
        return out
    num_entities, num_relations = index.num_entities, index.num_relations
    ids = np.unique(triples[:, [0, 2]])
    query_rows = _query_entity_rows(entity_rows, num_entities, chunk, ids)
    for b0 in range(0, len(triples), batch):
        real = triples[b0 : b0 + batch]
        # Padding with copies of a real query keeps every kernel at one static shape.
        t = np.concatenate([real, np.repeat(real[:1], batch - len(real), axis=0)])
        s, p, o = t.T
        p_rows = np.asarray(relation_rows(p))
        if p_rows.ndim != 2 or p_rows.shape[0] != batch:
            raise ValueError(
                f"relation_rows(ids [{batch}]) must return [{batch}, Wr], got {p_rows.shape}."
            )
        s_rows, o_rows = (query_rows[np.searchsorted(ids, x)] for x in (s, o))
        known = [  # the answer itself too: never counted against itself, filtered or not
            _known(index.sp, real[:, 0] * num_relations + real[:, 1], real[:, 2]),  # tails
            _known(index.po, real[:, 2] * num_relations + real[:, 1], real[:, 0]),  # heads
        ]
        acc = _stream(s_rows, p_rows, o_rows, known, entity_rows, num_entities, chunk, scorers)
        higher, ties = acc[:, 0, : len(real)], acc[:, 1, : len(real)]
        out[b0 : b0 + len(real)] = (higher + (ties + 1) // 2 + 1)[::-1].T  # rows (head, tail)
    return out


def _stream(s_rows, p_rows, o_rows, known, entity_rows, num_entities, chunk, scorers):
    """int64 [2 (tail, head), 2 (higher, ties), B]: counts over all entity chunks."""
    batch = len(p_rows)
    true = _true_scores(s_rows, p_rows, o_rows, scorers=scorers)
    acc = jnp.zeros((2, 2, batch), jnp.int32)
    for start in range(0, num_entities, chunk):
        stop = min(start + chunk, num_entities)
        rows = _read_entities(entity_rows, start, stop)
        if len(rows) < chunk:  # the last chunk, padded to the one static shape
            rows = np.concatenate([rows, np.zeros((chunk - len(rows), rows.shape[1]), rows.dtype)])
        excluded = np.zeros((2, batch, chunk), bool)
        for d, (q, cands) in enumerate(known):
            a, b = np.searchsorted(cands, [start, stop])
            excluded[d, q[a:b], cands[a:b] - start] = True
        n_valid = np.int32(stop - start)
        acc = _count_chunk(
            s_rows, p_rows, o_rows, rows, n_valid, true, excluded, acc, scorers=scorers
        )
    return np.asarray(acc).astype(np.int64)


def _nan_to_neg_inf(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(x), -jnp.inf, x)


def _check_scores(scores: jax.Array, shape: tuple[int, int], name: str) -> jax.Array:
    if scores.shape != shape:
        raise ValueError(
            f"{name} must return scores of shape {shape} (queries x candidates), "
            f"got {scores.shape}."
        )
    return _nan_to_neg_inf(scores)


@functools.partial(jax.jit, static_argnames="scorers")
def _true_scores(s_rows, p_rows, o_rows, *, scorers):
    """[2 (tail, head), B]: the answers' scores, the diagonal of a [B, B] scoring.

    Computed before streaming because every chunk compares against them. The answer itself is
    always filtered out of the chunks, so it can never tie with (or beat) itself even if the
    two scorings round differently.
    """
    score_sp_, score__po = scorers
    b = len(p_rows)
    tail = _check_scores(score_sp_(s_rows, p_rows, o_rows), (b, b), "score_sp_")
    head = _check_scores(score__po(s_rows, p_rows, o_rows), (b, b), "score__po")
    return jnp.stack([jnp.diagonal(tail), jnp.diagonal(head)])


@functools.partial(jax.jit, static_argnames="scorers")
def _count_chunk(s_rows, p_rows, o_rows, chunk_rows, n_valid, true, excluded, acc, *, scorers):
    """acc + [2 (tail, head), 2 (higher, ties), B] counts against one padded chunk."""
    score_sp_, score__po = scorers
    shape = (len(p_rows), len(chunk_rows))
    scores = [
        _check_scores(score_sp_(s_rows, p_rows, chunk_rows), shape, "score_sp_"),
        _check_scores(score__po(chunk_rows, p_rows, o_rows), shape, "score__po"),
    ]
    valid = jnp.arange(shape[1]) < n_valid
    counts = []
    for d in range(2):
        keep = valid & ~excluded[d]
        t = true[d][:, None]
        counts.append(jnp.stack([
            jnp.sum(keep & (scores[d] > t), axis=1, dtype=jnp.int32),
            jnp.sum(keep & (scores[d] == t), axis=1, dtype=jnp.int32),
        ]))
    return acc + jnp.stack(counts)
