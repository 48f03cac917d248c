"""RotatE: relations as rotations in complex space.

Reference: Zhiqing Sun, Zhi-Hong Deng, Jian-Yun Nie and Jian Tang: RotatE: Knowledge Graph
Embedding by Relational Rotation in Complex Space. ICLR 2019.
<https://openreview.net/forum?id=HkgEQnRqYQ>

score(s, p, o) = -||s * r - o|| = -sum_k |s_k r_k - o_k| (L1 over complex moduli, as in the
paper), r_k = exp(i p_k). Entity rows hold dim/2 complex numbers as [real | imag] halves (dim
must be even); a relation row holds dim/2 phases p_k in radians.
"""

import jax
import jax.numpy as jnp

from models.base import (
    KgeModel,
    check_all_mode,
    check_dim,
    chunked_distances,
    complex_halves,
    safe_sqrt,
)

_NAME = "rotate"


def _rotate(x: jax.Array, phases: jax.Array) -> jax.Array:
    """x * exp(i phases) for rows x [..., dim] and phases [..., dim/2]; returns [..., dim]."""
    x_re, x_im = complex_halves(_NAME, x)
    if phases.shape[-1] != x_re.shape[-1]:
        raise ValueError(
            f"{_NAME}: relation rows must hold dim/2 = {x_re.shape[-1]} phases for entity rows "
            f"of shape {x.shape}, got relation shape {phases.shape}; "
            "pull model.relation_width(dim) columns."
        )
    cos, sin = jnp.cos(phases), jnp.sin(phases)
    return jnp.concatenate([x_re * cos - x_im * sin, x_re * sin + x_im * cos], axis=-1)


def _distance(q: jax.Array, c: jax.Array) -> jax.Array:
    """sum_k |q_k - c_k| over complex rows [..., dim], broadcasting leading dims."""
    d_re, d_im = complex_halves(_NAME, q - c)
    return jnp.sum(safe_sqrt(d_re * d_re + d_im * d_im), axis=-1)


def make_rotate(*, chunk_size: int = 128) -> KgeModel:
    """Returns the RotatE model.

    Args:
      chunk_size: candidates scored at a time by score_sp_ / score__po, which have no matmul
        form; their temporaries are [chunk_size, B, dim] floats (B=1024, dim=256: 128 MiB
        in float32).
    """
    if chunk_size < 1:
        raise ValueError(f"{_NAME}: chunk_size must be a positive integer, got {chunk_size}.")

    def score_spo(s: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
        """(s [..., dim], p [..., dim/2], o [..., dim]) -> [...], broadcasting leading dims."""
        return -_distance(_rotate(s, p), o)

    def score_sp_(s: jax.Array, p: jax.Array, o_all: jax.Array) -> jax.Array:
        """(s [B, dim], p [B, dim/2], o_all [N, dim]) -> [B, N]."""
        check_all_mode(_NAME, "score_sp_", (s, p), o_all)
        return -chunked_distances(_distance, _rotate(s, p), o_all, chunk_size=chunk_size)

    def score__po(s_all: jax.Array, p: jax.Array, o: jax.Array) -> jax.Array:
        """(s_all [N, dim], p [B, dim/2], o [B, dim]) -> [B, N]."""
        check_all_mode(_NAME, "score__po", (p, o), s_all)
        # |r| = 1, so |s r - o| = |s - o conj(r)|: rotate the object back once per example.
        return -chunked_distances(_distance, _rotate(o, -p), s_all, chunk_size=chunk_size)

    return KgeModel(
        _NAME,
        lambda dim: check_dim(_NAME, dim, even=True),
        lambda dim: check_dim(_NAME, dim, even=True) // 2,
        score_spo,
        score_sp_,
        score__po,
    )
