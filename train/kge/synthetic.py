"""Synthetic knowledge graphs: skewed entity frequencies and a planted structure a model can learn.

Generative model (every step vectorized numpy, O(1) or O(log R) per triple):
  * popularity: entity e has weight ``(rank_e + 1) ** -zipf`` for a random permutation of ranks,
    relations likewise with `relation_zipf`. Heads and relations are drawn by popularity.
  * clusters: entities are split evenly at random into `num_clusters` latent clusters. Each
    (relation r, head cluster c) pair maps, through a fixed hash, to a tail cluster T(r, c).
  * tails, given (h, r) with c = cluster(h), by a mixture:
      - `functional`: one of `tails_per_group` fixed candidates of (r, c) (candidate j with
        probability ∝ 1 / (j + 1)): a noisy functional relation;
      - `noise`: any entity, by global popularity;
      - otherwise: a member of T(r, c), by popularity within that cluster (a continuous power
        law over the members' popularity ranks, which approximates their weights).
  So a tail is predictable from (head, relation) through the head's cluster: the most frequent
  training tail of (cluster(h), r) is right for roughly `functional` / H(tails_per_group) of
  held-out queries (H = harmonic number; less where popular heads saturate their candidates),
  against the top entity's popularity for the best constant guess.
  `entity_clusters` returns the planted clusters for such checks.

Triples are distinct (duplicates are dropped and redrawn; so are self-loops h == t), and
valid/test hold only triples whose head, relation and tail all occur in train. Entities that
were never drawn occur in no triple: ids span [0, num_entities) but some rows are never used,
as in a real embedding table with cold keys (a reload of the written files renumbers them).

The default `zipf=0.8` is a little more skewed than FB15k-237 (its rank-frequency slope is about
0.6 there; its top 1% of entities cover 18% of occurrences) since larger graphs are more skewed.
"""

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

_MAX_ROUNDS = 50


class _World(NamedTuple):
    """The fixed structure a seed determines; sampling triples only reads it."""
    cluster: np.ndarray       # int64 [N]: latent cluster of each entity
    members: np.ndarray       # int64 [N]: entity ids grouped by cluster, most popular first
    starts: np.ndarray        # int64 [C + 1]: cluster k is members[starts[k]:starts[k + 1]]
    entity_p: np.ndarray      # float64 [N]: popularity of each entity, sums to 1
    entity_cdf: np.ndarray    # float64 [N]: cumulative popularity over entity ids
    relation_cdf: np.ndarray  # float64 [R]
    zipf: float
    salt: np.uint64           # keys the hash of (relation, cluster, candidate)


MAX_DEFAULT_CLUSTERS = 64


def default_num_clusters(num_entities: int) -> int:
    """round(sqrt(num_entities)), at most `MAX_DEFAULT_CLUSTERS` (64).

    The map (relation, head cluster) -> tail cluster is a random clusters x relations x
    clusters tensor, which an embedding of rank k represents only for about k clusters or
    fewer. Uncapped, a 1M-entity graph had 1,000 clusters, out of reach of a dim-256 model:
    after 2 epochs test MRR was 0.019 on 100k entities with 316 clusters, 0.057 with 64.
    """
    return max(1, min(round(num_entities ** 0.5), MAX_DEFAULT_CLUSTERS))


def entity_clusters(num_entities: int, *, seed: int, num_clusters: int | None = None) -> np.ndarray:
    """int64 [num_entities]: the planted cluster of each entity for `generate` with this seed."""
    num_clusters = num_clusters or default_num_clusters(num_entities)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    return rng.permutation(num_entities) % num_clusters


def generate(num_entities: int, num_relations: int, num_triples: int, *, seed: int,
             zipf: float = 0.8, relation_zipf: float = 1.0, num_clusters: int | None = None,
             tails_per_group: int = 4, functional: float = 0.5, noise: float = 0.1,
             valid_fraction: float = 0.05, test_fraction: float = 0.05) -> dict[str, np.ndarray]:
    """Draw a knowledge graph (the model is in the module docstring). Deterministic in `seed`.

    Args:
      num_entities, num_relations: id ranges; num_entities**2 * num_relations < 2**63.
      num_triples: distinct triples over all splits.
      zipf, relation_zipf: rank-frequency exponents of entity / relation popularity (0 = uniform).
      num_clusters: latent entity clusters; default `default_num_clusters`.
      tails_per_group, functional, noise: the tail mixture; functional + noise <= 1.
      valid_fraction, test_fraction: held-out shares of num_triples. Held-out triples are drawn
        among those whose entities and relation occur in train; if too few qualify (tiny
        graphs), valid/test are smaller and train takes the rest.

    Returns:
      {"train", "valid", "test"}: int64 [n, 3] (head, relation, tail), disjoint, no duplicates.

    Raises:
      ValueError: bad arguments, or `num_triples` distinct triples could not be drawn (the
        graph saturates: raise num_entities / num_relations or lower zipf).
    """
    n, r = num_entities, num_relations
    if n < 2 or r < 1 or num_triples < 1 or n * n * r >= 2 ** 63:
        raise ValueError(f"need num_entities >= 2, num_relations >= 1, num_triples >= 1 and "
                         f"num_entities**2 * num_relations < 2**63; got {n}, {r}, {num_triples}")
    if not (0 <= functional and 0 <= noise and functional + noise <= 1 and tails_per_group >= 1):
        raise ValueError(f"need functional, noise >= 0 with functional + noise <= 1 and "
                         f"tails_per_group >= 1; got {functional}, {noise}, {tails_per_group}")
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 0.5):
        raise ValueError(f"need valid_fraction, test_fraction >= 0 summing to < 0.5; got "
                         f"{valid_fraction}, {test_fraction}")
    num_clusters = num_clusters or default_num_clusters(n)
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, num_entities]; got {num_clusters}")
    world = _world(n, r, num_clusters, zipf, relation_zipf, seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    mix = (tails_per_group, functional, noise)
    keys = _distinct_keys(world, n, r, num_triples, mix, rng)
    triples = np.stack((keys // (r * n), keys // n % r, keys % n), axis=1)
    return _split(triples, n, r, round(valid_fraction * num_triples), round(test_fraction * num_triples))


def write_dataset(folder: str | os.PathLike, splits: dict[str, np.ndarray]) -> Path:
    """Write ``folder/<split>.txt`` as ``e<head>\\tr<relation>\\te<tail>`` lines; return folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, triples in splits.items():
        with open(folder / f"{split}.txt", "w", encoding="utf-8", newline="\n") as f:
            for start in range(0, len(triples), 1 << 20):
                h, r, t = triples[start:start + (1 << 20)].T.tolist()
                f.write("".join(map("e{}\tr{}\te{}\n".format, h, r, t)))
    return folder


def _world(n: int, r: int, c: int, zipf: float, relation_zipf: float, seed: int) -> _World:
    cluster = entity_clusters(n, seed=seed, num_clusters=c)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1])
    weight = (rng.permutation(n) + 1.0) ** -zipf
    relation_weight = (rng.permutation(r) + 1.0) ** -relation_zipf
    members = np.lexsort((-weight, cluster))
    starts = np.concatenate(([0], np.cumsum(np.bincount(cluster, minlength=c))))
    salt = np.uint64(rng.integers(2 ** 63))
    return _World(cluster, members, starts, weight / weight.sum(), np.cumsum(weight),
                  np.cumsum(relation_weight), zipf, salt)


def _distinct_keys(world: _World, n: int, r: int, count: int, mix: tuple, rng) -> np.ndarray:
    """`count` distinct triple keys (h * r + rel) * n + t, in random order."""
    keys = np.zeros(0, np.int64)
    fresh_rate = 1.0
    for _ in range(_MAX_ROUNDS):
        need = count - len(keys)
        if need <= 0:
            break
        h, rel, t = _sample(world, int(need / max(fresh_rate, 0.02) * 1.1) + 64, rng, *mix)
        before = len(keys)
        keys = _sorted_unique(np.concatenate((keys, ((h * r + rel) * n + t)[h != t])))
        fresh_rate = (len(keys) - before) / len(h)
    if len(keys) < count:
        raise ValueError(f"drew only {len(keys)} distinct triples of {count} in {_MAX_ROUNDS} "
                         "rounds: the graph saturates; raise num_entities / num_relations or lower zipf")
    return keys[rng.permutation(len(keys))[:count]]  # a uniform subset: keys are sorted


def _sample(world: _World, size: int, rng, tails_per_group: int, functional: float,
            noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`size` independent (head, relation, tail) draws, possibly repeated, in arbitrary order."""
    # Heads by counts, in id order: every other column is drawn independently of the heads,
    # so the draws stay i.i.d. as a multiset, and this avoids `size` cache-missing searches.
    h = np.repeat(np.arange(len(world.entity_p)), rng.multinomial(size, world.entity_p))
    rel = _draw(world.relation_cdf, rng.random(size))
    c = world.cluster[h]
    num_clusters = len(world.starts) - 1
    tail_cluster = (_hash(world.salt, rel, c) % np.uint64(num_clusters)).astype(np.int64)
    candidate = _draw(np.cumsum(1.0 / np.arange(1, tails_per_group + 1)), rng.random(size))
    kind = rng.random(size)
    u = np.where(kind < functional, _unit(_hash(world.salt ^ np.uint64(1), rel, c, candidate)),
                 rng.random(size))
    first = world.starts[tail_cluster]
    t = world.members[first + _power_law_rank(u, world.starts[tail_cluster + 1] - first, world.zipf)]
    noisy = kind >= 1.0 - noise
    t[noisy] = _draw(world.entity_cdf, rng.random(int(noisy.sum())))
    return h, rel, t


def _power_law_rank(u: np.ndarray, m: np.ndarray, s: float) -> np.ndarray:
    """Rank in [0, m) with P(k) ≈ ∝ (k + 1) ** -s, by inverting the continuous power law.

    Members of a cluster sorted by popularity have about these relative weights (global ranks
    are spread over clusters at random), so this samples by popularity within the cluster in
    O(1), without a cache-missing binary search per draw.
    """
    if s == 1.0:
        x = (m + 1.0) ** u
    else:
        x = (1.0 + u * ((m + 1.0) ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s))
    return np.clip(x.astype(np.int64) - 1, 0, m - 1)


def _split(triples: np.ndarray, n: int, r: int, n_valid: int, n_test: int) -> dict[str, np.ndarray]:
    """Hold out valid/test among the first (shuffled) triples whose ids all occur in the rest."""
    m = min(len(triples), 2 * (n_valid + n_test))
    candidates, rest = triples[:m], triples[m:]
    seen_e = np.zeros(n, bool)
    seen_e[rest[:, 0]] = True
    seen_e[rest[:, 2]] = True
    seen_r = np.zeros(r, bool)
    seen_r[rest[:, 1]] = True
    ok = seen_e[candidates[:, 0]] & seen_e[candidates[:, 2]] & seen_r[candidates[:, 1]]
    held = np.flatnonzero(ok)[:n_valid + n_test]
    n_valid = n_valid if len(held) == n_valid + n_test else len(held) * n_valid // max(n_valid + n_test, 1)
    train = np.concatenate((np.delete(candidates, held, axis=0), rest))
    return {"train": train, "valid": candidates[held[:n_valid]], "test": candidates[held[n_valid:]]}


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # Sort-based: numpy >= 2.3's hash-based np.unique is several times slower on int64 keys.
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn with probabilities ∝ the increments of the (unnormalized) `cdf`."""
    return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)


def _hash(salt: np.uint64, *columns: np.ndarray) -> np.ndarray:
    """uint64 hash of each row of the integer `columns` (splitmix64 chained)."""
    x = np.full(len(columns[0]), salt, np.uint64)
    for column in columns:
        x = _mix(x ^ column.astype(np.uint64))
    return x


def _mix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64, as intended (arrays never warn)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _unit(x: np.ndarray) -> np.ndarray:
    """uint64 -> float64 uniform in [0, 1)."""
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
