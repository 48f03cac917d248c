"""RESCAL: a full bilinear model, one dim x dim matrix per relation.

Reference: Maximilian Nickel, Volker Tresp and Hans-Peter Kriegel: A Three-Way Model for
Collective Learning on Multi-Relational Data. ICML 2011.
<https://icml.cc/2011/papers/438_icmlpaper.pdf>

score(s, p, o) = s^T W_p o. Entity rows have width dim; a relation row is W_p flattened
row-major (width dim*dim, W_p[i, j] at i*dim + j).
"""

import jax
import jax.numpy as jnp

from models.base import KgeModel, check_all_mode, check_dim

_NAME = "rescal"


def _matrices(s: jax.Array, p: jax.Array) -> jax.Array:
    """Reshapes relation rows [..., dim*dim] to [..., dim, dim], dim taken from the entity rows."""
    dim = s.shape[-1]
    if p.shape[-1] != dim * dim:
        raise ValueError(
            f"{_NAME}: relation rows must have width dim*dim = {dim * dim} for entity rows of "
            f"width {dim}, got relation shape {p.shape}; pull model.relation_width(dim) columns."
        )
    return p.reshape(*p.shape[:-1], dim, dim)


def _score_spo(s: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
    """(s [..., dim], p [..., dim*dim], o [..., dim]) -> [...], broadcasting leading dims."""
    # s^T W first: per-example negatives then cost [B, dim] + [B, K, dim], never [B, K, dim, dim].
    s_w = jnp.matmul(s[..., None, :], _matrices(s, p))[..., 0, :]
    return jnp.sum(s_w * o, axis=-1)


def _score_sp_(s: jax.Array, p: jax.Array, o_all: jax.Array) -> jax.Array:
    """(s [B, dim], p [B, dim*dim], o_all [N, dim]) -> [B, N]."""
    check_all_mode(_NAME, "score_sp_", (s, p), o_all)
    return jnp.einsum("bi,bij->bj", s, _matrices(s, p)) @ o_all.T


def _score__po(s_all: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
    """(s_all [N, dim], p [B, dim*dim], o [B, dim]) -> [B, N]."""
    check_all_mode(_NAME, "score__po", (p, o), s_all)
    return jnp.einsum("bij,bj->bi", _matrices(o, p), o) @ s_all.T


def make_rescal() -> KgeModel:
    """Returns the RESCAL model; entity rows of width dim, relation rows of width dim*dim."""
    return KgeModel(
        _NAME,
        lambda dim: check_dim(_NAME, dim),
        lambda dim: check_dim(_NAME, dim) ** 2,
        _score_spo,
        _score_sp_,
        _score__po,
    )
