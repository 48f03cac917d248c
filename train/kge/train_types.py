"""KGE training types beside negative sampling: 1vsAll and KvsAll (LibKGE's names).

- negative_sampling: ``--negatives`` entities shared by the batch corrupt head and tail
  (train/kge/train.py's ``epoch_batches`` and ``make_loss``).
- 1vsAll: the same batches with every entity as a negative: cross-entropy of each triple's
  true answer against all entities, in both directions (what ``--negatives >= #entities``
  always did).
- KvsAll: the unit is a query, not a triple. Every unique (s, p, ?) and (?, p, o) of the
  training triples is one query, scored against all entities and labelled multi-hot with all
  of its training answers; the loss is binary cross-entropy summed over the entities and
  averaged over the queries, with ConvE's label smoothing ``(1 - e) * y + 1 / #entities``
  (LibKGE train_KvsAll.py). With ``--reciprocal`` a (?, p, o) query is the tail query
  (o, p^-1, ?) of the inverse relation's row.

Shapes are fixed, so the step compiles once: a batch has ``batch_size`` queries (padding
queries weigh 0), all entity rows, and its labels as ``(query, entity)`` pairs padded to the
most answers any ``batch_size`` queries have (``Queries.max_answers``), scattered into the
dense [B, #entities] label matrix inside the jitted step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import models
from jaxps import Batch, index_batch
from train.kge.config import dropout_rates


class Queries(NamedTuple):
    """The KvsAll queries of a training set, grouped with their answers (CSR layout).

    entity: int64 [Q], the query's known entity; relation: int64 [Q], its relation row
    (p, or p + #relations for a reciprocal head query); head: bool [Q], the query asks for the
    head (?, p, o) and is scored with ``score__po`` (only without --reciprocal);
    offsets: int64 [Q + 1], query q's answers are ``answers[offsets[q]:offsets[q + 1]]``;
    answers: int64 [A]; max_answers: the most answers of any ``batch_size`` queries.
    """

    entity: np.ndarray
    relation: np.ndarray
    head: np.ndarray
    offsets: np.ndarray
    answers: np.ndarray
    max_answers: int

    def __len__(self) -> int:
        return len(self.entity)


def all_entities(config, num_entities: int) -> bool:
    """Whether every entity is a negative of every batch (1vsAll)."""
    return config.train_type == "1vsAll" or config.negatives >= num_entities


def kvsall_queries(train: np.ndarray, num_relations: int, *, reciprocal: bool,
                   batch_size: int) -> Queries:
    """The unique (s, p, ?) and (?, p, o) queries of ``train`` int [T, 3] with their answers.

    Vectorized: one lexsort of the 2T (query, answer) pairs; a duplicate training triple
    gives a duplicate answer, harmless (labels are set with max).
    """
    s, p, o = (np.asarray(train[:, i], np.int64) for i in range(3))
    t = len(train)
    entity = np.concatenate([s, o])
    relation = np.concatenate([p, p + num_relations if reciprocal else p])
    head = np.concatenate([np.zeros(t, bool), np.full(t, not reciprocal)])
    answer = np.concatenate([o, s])
    order = np.lexsort((answer, entity, relation, head))
    entity, relation, head, answer = entity[order], relation[order], head[order], answer[order]
    new = np.ones(len(entity), bool)
    new[1:] = (entity[1:] != entity[:-1]) | (relation[1:] != relation[:-1]) | \
        (head[1:] != head[:-1])
    starts = np.flatnonzero(new)
    offsets = np.append(starts, len(entity)).astype(np.int64)
    counts = np.sort(np.diff(offsets))[::-1]
    return Queries(entity[starts], relation[starts], head[starts], offsets, answer,
                   int(counts[:batch_size].sum()) if len(counts) else 1)


def training_units(train: np.ndarray, num_relations: int, config):
    """What an epoch permutes: the triples, or with KvsAll the queries (``Queries``)."""
    if config.train_type != "KvsAll":
        return train
    return kvsall_queries(train, num_relations, reciprocal=config.reciprocal,
                          batch_size=config.batch_size)


def kvsall_batches(queries: Queries, num_entities: int, config, epoch: int, rank: int,
                   size: int, *, start: int = 0):
    """This rank's KvsAll batches of one epoch, in ``epoch_batches``' data order (the epoch's
    permutation of the queries, rank r takes every size-th entry from ``start`` on).

    data: e, r int32 [B] positions of the query's entity and relation rows; cand int32 [N]
    positions of all entities in id order; lq, le int32 [L] (query index in the batch, entity
    id) of each label, lw float32 [L] (0: padding); weight float32 [B]; seed uint32; head
    bool [B] without --reciprocal.
    """
    perm = np.random.default_rng([config.seed, epoch]).permutation(len(queries))
    mine = perm[start:][rank::size]
    b, cap = config.batch_size, queries.max_answers
    cand = np.arange(num_entities)
    for first in range(0, len(mine), b):
        rng = np.random.default_rng([config.seed, epoch, rank, size, start + first * size])
        part = mine[first:first + b]
        n = len(part)
        weight = np.zeros(b, np.float32)
        weight[:n] = 1.0
        part = np.concatenate([part, np.repeat(part[:1], b - n)])
        lo, hi = queries.offsets[part[:n]], queries.offsets[part[:n] + 1]
        counts = hi - lo
        # Answers of the batch's real queries, vectorized: the k-th answer of query i sits
        # at offsets[i] + k.
        rows = np.repeat(np.arange(n), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        labels = queries.answers[np.repeat(lo, counts) + within]
        lq, le, lw = (np.zeros(cap, np.int32), np.zeros(cap, np.int32),
                      np.zeros(cap, np.float32))
        lq[:len(rows)], le[:len(rows)], lw[:len(rows)] = rows, labels, 1.0
        keys, pos = index_batch({"entity": (queries.entity[part], cand),
                                 "relation": queries.relation[part]})
        (e, c), r = pos["entity"], pos["relation"]
        data = {"e": e, "r": r, "cand": c, "lq": lq, "le": le, "lw": lw, "weight": weight,
                "seed": np.uint32(rng.integers(2**32))}
        if not config.reciprocal:
            data["head"] = queries.head[part]
        yield Batch(keys, data, n)


def kvsall_max_keys(config, num_entities: int, relation_rows: int) -> dict:
    """SparseTrainer's max_keys of KvsAll batches: all entities, one relation per query."""
    return {"entity": num_entities, "relation": min(relation_rows, config.batch_size)}


def kvsall_labels(lq, le, lw, batch: int, num_entities: int, smoothing: float):
    """Dense labels float32 [batch, num_entities] from the (query, entity) pairs, smoothed."""
    labels = jnp.zeros((batch, num_entities), jnp.float32).at[lq, le].max(lw)
    if smoothing:
        labels = (1.0 - smoothing) * labels + 1.0 / num_entities
    return labels


def dropout(key, x, rate: float):
    """Inverted dropout of the rows ``x`` at ``rate`` (a Python float; 0: ``x`` itself)."""
    if not rate:
        return x
    keep = 1.0 - rate
    return jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, 0.0)


def make_kvsall_loss(model: models.KgeModel, config, regularizer):
    """Pure JAX ``(rows, data) -> scalar``: BCE of every query against all entities + reg.

    ``regularizer``: ``rows -> scalar`` penalty (train.py's N3 / L2), applied to the query's
    entity and relation rows, weighted by ``config.reg``.
    """

    entity_rate, relation_rate = dropout_rates(config)

    def loss_fn(rows, data):
        ent, rel = rows["entity"], rows["relation"]
        e, r, cand = ent[data["e"]], rel[data["r"]], ent[data["cand"]]
        if entity_rate or relation_rate:
            k1, k2 = jax.random.split(jax.random.PRNGKey(data["seed"]))
            e, r = dropout(k1, e, entity_rate), dropout(k2, r, relation_rate)
        scores = model.score_sp_(e, r, cand)
        if not config.reciprocal:
            scores = jnp.where(data["head"][:, None], model.score__po(cand, r, e), scores)
        labels = kvsall_labels(data["lq"], data["le"], data["lw"], *scores.shape,
                               config.label_smoothing)
        # BCE with logits, stable: softplus(x) - y x.
        per_query = jnp.sum(jax.nn.softplus(scores) - labels * scores, axis=1)
        w = data["weight"]
        total = jnp.sum(w * per_query)
        if config.reg:
            total += config.reg * (regularizer(w[:, None] * e) + regularizer(w[:, None] * r))
        return total / jnp.maximum(jnp.sum(w), 1.0)

    return loss_fn
