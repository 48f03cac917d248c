"""DistMult: a diagonal bilinear model.

Reference: Bishan Yang, Wen-tau Yih, Xiaodong He, Jianfeng Gao and Li Deng: Embedding Entities
and Relations for Learning and Inference in Knowledge Bases. ICLR 2015.
<https://arxiv.org/abs/1412.6575>

score(s, p, o) = <s, p, o> = sum_k s_k p_k o_k; entity and relation rows have width dim.
"""

import jax
import jax.numpy as jnp

from models.base import KgeModel, check_all_mode, check_dim

_NAME = "distmult"


def _score_spo(s: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
    """(s [..., dim], p [..., dim], o [..., dim]) -> [...], broadcasting leading dims."""
    return jnp.sum(s * p * o, axis=-1)


def _score_sp_(s: jax.Array, p: jax.Array, o_all: jax.Array) -> jax.Array:
    """(s [B, dim], p [B, dim], o_all [N, dim]) -> [B, N]."""
    check_all_mode(_NAME, "score_sp_", (s, p), o_all)
    return (s * p) @ o_all.T


def _score__po(s_all: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
    """(s_all [N, dim], p [B, dim], o [B, dim]) -> [B, N]."""
    check_all_mode(_NAME, "score__po", (p, o), s_all)
    return (p * o) @ s_all.T


def make_distmult() -> KgeModel:
    """Returns the DistMult model; rows of width dim for both tables."""
    width = lambda dim: check_dim(_NAME, dim)
    return KgeModel(_NAME, width, width, _score_spo, _score_sp_, _score__po)
