"""ComplEx: a bilinear model with complex embeddings.

Reference: Théo Trouillon, Johannes Welbl, Sebastian Riedel, Éric Gaussier and Guillaume
Bouchard: Complex Embeddings for Simple Link Prediction. ICML 2016.
<http://proceedings.mlr.press/v48/trouillon16.pdf>

score(s, p, o) = Re(<s, p, conj(o)>) = sum_k Re(s_k p_k conj(o_k)). Entity and relation rows
both hold dim/2 complex numbers as [real | imag] halves (dim must be even).
"""

import jax
import jax.numpy as jnp

from models.base import KgeModel, check_all_mode, check_dim, complex_halves

_NAME = "complex"


def _score_spo(s: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
    """(s [..., dim], p [..., dim], o [..., dim]) -> [...], broadcasting leading dims."""
    (s_re, s_im), (p_re, p_im), (o_re, o_im) = (complex_halves(_NAME, x) for x in (s, p, o))
    return jnp.sum(
        s_re * p_re * o_re + s_im * p_re * o_im + s_re * p_im * o_im - s_im * p_im * o_re, axis=-1
    )


def _score_sp_(s: jax.Array, p: jax.Array, o_all: jax.Array) -> jax.Array:
    """(s [B, dim], p [B, dim], o_all [N, dim]) -> [B, N]."""
    check_all_mode(_NAME, "score_sp_", (s, p), o_all)
    (s_re, s_im), (p_re, p_im) = complex_halves(_NAME, s), complex_halves(_NAME, p)
    # Re(q conj(o)) = q_re o_re + q_im o_im with q = s p: one [B, dim] x [dim, N] matmul.
    sp = jnp.concatenate([s_re * p_re - s_im * p_im, s_re * p_im + s_im * p_re], axis=-1)
    return sp @ o_all.T


def _score__po(s_all: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
    """(s_all [N, dim], p [B, dim], o [B, dim]) -> [B, N]."""
    check_all_mode(_NAME, "score__po", (p, o), s_all)
    (p_re, p_im), (o_re, o_im) = complex_halves(_NAME, p), complex_halves(_NAME, o)
    # Re(s u) = s_re u_re - s_im u_im with u = p conj(o); the second half below is -u_im.
    po = jnp.concatenate([p_re * o_re + p_im * o_im, p_re * o_im - p_im * o_re], axis=-1)
    return po @ s_all.T


def make_complex() -> KgeModel:
    """Returns the ComplEx model; rows of width dim (dim/2 complex numbers) for both tables."""
    width = lambda dim: check_dim(_NAME, dim, even=True)
    return KgeModel(_NAME, width, width, _score_spo, _score_sp_, _score__po)
