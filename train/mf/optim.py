"""Row optimizers for MF beyond jaxps's own (``row_adagrad``, ``row_adam``).

Each is an optax ``GradientTransformation`` for one row ``[width]``, wrapped by
``jaxps.row_optimizer`` so it runs on every pulled row with its state in the PS row.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import jaxps


class RowwiseAdagradState(NamedTuple):
    """State of one row: the accumulated mean squared gradient, float32 []."""

    sum_sq: jax.Array


def scale_by_rowwise_adagrad(initial_accumulator_value: float = 0.1,
                             eps: float = 1e-10) -> optax.GradientTransformation:
    """AdaGrad with one accumulator per row (FBGEMM's "rowwise AdaGrad").

    ``acc += mean(g^2)``; ``update = g / sqrt(acc + eps)``. One state column instead of
    ``width`` halves the bytes each row moves through the PS, at the price of one step size
    for all the coordinates of a row (fine for factor rows, whose coordinates are alike).
    """

    def init(params):
        return RowwiseAdagradState(jnp.full((), initial_accumulator_value, jnp.float32))

    def update(updates, state, params=None):
        del params
        acc = state.sum_sq + jnp.mean(updates * updates)
        return updates * jax.lax.rsqrt(acc + eps), RowwiseAdagradState(acc)

    return optax.GradientTransformation(init, update)


class SgdState(NamedTuple):
    """State of one row: how many steps it took, float32 [] (kept because a PS row needs
    at least one state column: ``TableSpec`` with state_dim 0 has no optimizer slot)."""

    count: jax.Array


def scale_by_sgd_count() -> optax.GradientTransformation:
    """Identity on the gradient; counts the steps of the row."""

    def init(params):
        return SgdState(jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        del params
        return updates, SgdState(state.count + 1.0)

    return optax.GradientTransformation(init, update)


def make_optimizer(name: str, lr: float) -> jaxps.RowOptimizer:
    """The row optimizer ``name`` ("adagrad", "rowwise-adagrad", "sgd", "adam")."""
    if name == "adagrad":
        return jaxps.row_adagrad(lr)
    if name == "adam":
        return jaxps.row_adam(lr)
    if name == "rowwise-adagrad":
        tx = optax.chain(scale_by_rowwise_adagrad(), optax.scale(-lr))
    elif name == "sgd":
        tx = optax.chain(scale_by_sgd_count(), optax.scale(-lr))
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: adagrad, rowwise-adagrad, sgd, adam")
    return jaxps.row_optimizer(tx, name=name)
