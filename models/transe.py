"""TransE: relations as translations in embedding space.

Reference: Antoine Bordes, Nicolas Usunier, Alberto Garcia-Durán, Jason Weston and Oksana
Yakhnenko: Translating Embeddings for Modeling Multi-relational Data. NIPS 2013.
<https://papers.nips.cc/paper/5071-translating-embeddings-for-modeling-multi-relational-data>

score(s, p, o) = -||s + p - o||_norm with norm 1 (LibKGE's default `l_norm: 1.`) or 2; entity
and relation rows have width dim.
"""

import jax
import jax.numpy as jnp

from models.base import KgeModel, check_all_mode, check_dim, chunked_distances, safe_sqrt

_NAME = "transe"


def _l1_distance(q: jax.Array, c: jax.Array) -> jax.Array:
    """||q - c||_1 over the last axis, broadcasting leading dims."""
    return jnp.sum(jnp.abs(q - c), axis=-1)


def _l2_distance(q: jax.Array, c: jax.Array) -> jax.Array:
    """||q - c||_2 over the last axis, broadcasting leading dims."""
    diff = q - c
    return safe_sqrt(jnp.sum(diff * diff, axis=-1))


def _all_distances(
    queries: jax.Array, candidates: jax.Array, *, norm: int, chunk_size: int
) -> jax.Array:
    """[B, N] distances between queries [B, dim] and every candidate [N, dim].

    L2 uses ||q||^2 - 2 q.c + ||c||^2, a matmul with [B, N] memory. L1 has no such form: it is
    computed chunk_size candidates at a time, with [chunk_size, B, dim] temporaries.
    """
    if norm == 1:
        return chunked_distances(_l1_distance, queries, candidates, chunk_size=chunk_size)
    # HIGHEST: the expansion cancels for near rows, so reduced-precision matmuls (TF32, bf16
    # passes on GPU/TPU) would swamp small distances.
    cross = jnp.matmul(queries, candidates.T, precision=jax.lax.Precision.HIGHEST)
    squared = jnp.sum(queries**2, axis=-1)[:, None] - 2.0 * cross + jnp.sum(candidates**2, axis=-1)
    return safe_sqrt(squared)  # safe_sqrt clamps the rounding-negative values at 0


def make_transe(*, norm: int = 1, chunk_size: int = 128) -> KgeModel:
    """Returns the TransE model.

    Args:
      norm: 1 (L1, LibKGE's default) or 2 (L2).
      chunk_size: candidates scored at a time by score_sp_ / score__po under L1; their
        temporaries are [chunk_size, B, dim] floats (B=1024, dim=256: 128 MiB in float32).
    """
    if norm not in (1, 2):
        raise ValueError(f"{_NAME}: norm must be 1 (L1, the default) or 2 (L2), got {norm!r}.")
    if chunk_size < 1:
        raise ValueError(f"{_NAME}: chunk_size must be a positive integer, got {chunk_size}.")
    norm = int(norm)
    distance = _l1_distance if norm == 1 else _l2_distance

    def score_spo(s: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
        """(s [..., dim], p [..., dim], o [..., dim]) -> [...], broadcasting leading dims."""
        return -distance(s + p, o)

    def score_sp_(s: jax.Array, p: jax.Array, o_all: jax.Array) -> jax.Array:
        """(s [B, dim], p [B, dim], o_all [N, dim]) -> [B, N]."""
        check_all_mode(_NAME, "score_sp_", (s, p), o_all)
        return -_all_distances(s + p, o_all, norm=norm, chunk_size=chunk_size)

    def score__po(s_all: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
        """(s_all [N, dim], p [B, dim], o [B, dim]) -> [B, N]."""
        check_all_mode(_NAME, "score__po", (p, o), s_all)
        # ||s + p - o|| = ||(o - p) - s||: the query is o - p, the candidates are subjects.
        return -_all_distances(o - p, s_all, norm=norm, chunk_size=chunk_size)

    width = lambda dim: check_dim(_NAME, dim)
    return KgeModel(_NAME, width, width, score_spo, score_sp_, score__po)
