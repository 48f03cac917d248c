"""Biased matrix factorization as pure JAX functions of already-pulled rows.

The model of Koren, Bell & Volinsky, "Matrix factorization techniques for recommender
systems" (IEEE Computer 2009), eq. 4, as Surprise's ``SVD`` implements it: the predicted
rating of user u for item i is

    r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>

with the global mean ``mu`` of the training ratings (a constant), biases ``b_u``, ``b_i`` and
factors ``p_u``, ``q_i`` of size ``dim``. Row layout (one PS row per user and per item):
``[factors (dim) | bias (1)]``, so ``row_width(dim) == dim + 1``.

The loss of one observed rating is Surprise's SGD objective,

    0.5 * (r_hat - r)^2 + 0.5 * reg * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2),

summed over the ratings of a batch: the L2 term is paid once per *occurrence* of a row, so
a user with many ratings is regularized as often as it is updated (as in Surprise and the
Lapse/NuPS MF task), and the gradient each row receives is the sum of its per-rating SGD
gradients. No PS, no I/O: every function is jit-able and works on any leading batch shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def row_width(dim: int) -> int:
    """Parameter columns of one user or item row: ``dim`` factors and one bias."""
    if dim < 1:
        raise ValueError(f"mf: dim must be a positive integer, got {dim}")
    return dim + 1


def predict(user_rows: jax.Array, item_rows: jax.Array, mean) -> jax.Array:
    """Predicted ratings (unclipped).

    Args:
      user_rows, item_rows: float [..., dim + 1] rows ``[factors | bias]`` of the pairs'
        users and items (same leading shape).
      mean: the global mean rating mu (a scalar).

    Returns:
      float [...]: ``mean + b_u + b_i + <p_u, q_i>``.
    """
    dot = jnp.sum(user_rows[..., :-1] * item_rows[..., :-1], axis=-1)
    return mean + user_rows[..., -1] + item_rows[..., -1] + dot


def loss(user_rows: jax.Array, item_rows: jax.Array, ratings: jax.Array, weights: jax.Array,
         *, mean, reg: float) -> jax.Array:
    """Weighted sum over pairs of the squared error and the per-occurrence L2 term.

    Args:
      user_rows, item_rows: float [B, dim + 1], one row per rating (gathered by position).
      ratings: float [B] observed ratings.
      weights: float [B]; 0 drops a pair (padding), 1 counts it once.
      mean: the global mean rating.
      reg: L2 weight per occurrence (Surprise's ``reg_all``, default 0.02).

    Returns:
      scalar: ``sum_b w_b * (0.5 * err_b^2 + 0.5 * reg * (|u_b|^2 + |i_b|^2))``.
    """
    err = predict(user_rows, item_rows, mean) - ratings
    l2 = jnp.sum(user_rows * user_rows, axis=-1) + jnp.sum(item_rows * item_rows, axis=-1)
    return jnp.sum(weights * (0.5 * err * err + 0.5 * reg * l2))


def batch_loss(rows: dict, data: dict, *, mean, reg: float) -> jax.Array:
    """The trainer's ``loss_fn`` form over a batch's pulled rows.

    Args:
      rows: ``{"user": [Bu, dim + 1], "item": [Bi, dim + 1]}`` (unique rows of the batch,
        in any order, possibly followed by padding rows that no position refers to).
      data: ``{"u": int32 [B], "i": int32 [B]`` positions into those rows, ``"y": float [B]``
        ratings, ``"w": float [B]`` weights}.

    Returns:
      scalar: the summed loss (see ``loss``); differentiate it for per-rating SGD steps.
    """
    return loss(rows["user"][data["u"]], rows["item"][data["i"]], data["y"], data["w"],
                mean=mean, reg=reg)
