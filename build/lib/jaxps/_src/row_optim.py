"""Row optimizers: optax transformations applied row by row, with state in the PS row.

A PS row is ``dim`` parameter columns followed by ``state_dim`` optimizer-state columns
(see ``TableSpec``), so relocation and replication move the optimizer state together with
the parameter. A ``RowOptimizer`` is an optax ``GradientTransformation`` vmapped over rows:
each row is an independent "parameter" with its own state. For element-wise optimizers
(AdaGrad) this is exactly the dense optimizer; for Adam it gives *lazy* Adam, where each row
keeps its own step count and only rows touched by a batch advance (identical to dense Adam
when every row is touched at every step).

The state pytree of one row is flattened into float32 columns in leaf order (integer leaves
such as Adam's step count are stored as floats, exact up to 2**24 steps per row).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import InputError


class RowOptimizer(NamedTuple):
    """An optimizer for PS rows, optax's ``(init, update)`` protocol applied per row.

    Attributes:
      init: ``params [U, dim] -> state`` (a pytree whose leaves have a leading U axis).
      update: ``(grads [U, dim], state, params [U, dim]) -> (updates [U, dim], new_state)``;
        ``params + updates`` are the new parameters, as with optax.
      state_dim: ``dim -> number of state columns`` of a row (for ``TableSpec.state_dim``).
      state_init: the initial value of every state column (for ``TableSpec.state_init``).
      pack: ``state -> float32 [U, state_dim]``: the state as PS columns.
      unpack: ``float32 [U, state_dim] -> state``; the inverse of ``pack``.
      name: for messages and metrics.
    """

    init: Callable
    update: Callable
    state_dim: Callable[[int], int]
    state_init: float
    pack: Callable
    unpack: Callable
    name: str


def row_optimizer(tx: optax.GradientTransformation, *, name: str = "custom") -> RowOptimizer:
    """Wrap an optax transformation so that it runs independently on every row.

    Args:
      tx: any optax transformation whose state, for one row ``[dim]``, is a pytree of
        arrays; every state column must start at the same value (TableSpec has a single
        ``state_init``), e.g. AdaGrad's accumulator or Adam's zero moments and count.
      name: shown in messages.

    Raises:
      InputError: the transformation's initial state is not one constant value.
    """
    layout: dict[int, tuple] = {}

    def row_layout(dim: int):
        if dim not in layout:
            shapes = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((dim,), jnp.float32))
            leaves, treedef = jax.tree_util.tree_flatten(shapes)
            sizes = [math.prod(leaf.shape) for leaf in leaves]
            init = jax.tree_util.tree_leaves(tx.init(jnp.zeros((dim,), jnp.float32)))
            values = np.unique(np.concatenate([np.ravel(np.asarray(x, np.float32))
                                               for x in init] or [np.zeros(0, np.float32)]))
            if len(values) > 1:
                raise InputError(f"row optimizer {name!r}: its initial state has several values "
                                 f"{values[:4].tolist()}; TableSpec.state_init is one float per "
                                 "table, so use a transformation whose state starts constant")
            layout[dim] = (leaves, treedef, sizes, float(values[0]) if len(values) else 0.0)
        return layout[dim]

    def state_dim(dim: int) -> int:
        return sum(row_layout(dim)[2])

    def pack(state) -> jax.Array:
        leaves = jax.tree_util.tree_leaves(state)
        if not leaves:
            return jnp.zeros((0, 0), jnp.float32)
        u = leaves[0].shape[0]
        return jnp.concatenate([x.reshape(u, -1).astype(jnp.float32) for x in leaves], axis=1)

    def unpack_for(dim: int, cols: jax.Array):
        leaves, treedef, sizes, _ = row_layout(dim)
        out, offset = [], 0
        for leaf, size in zip(leaves, sizes):
            part = cols[:, offset:offset + size].reshape((cols.shape[0], *leaf.shape))
            out.append(part.astype(leaf.dtype))
            offset += size
        return jax.tree_util.tree_unflatten(treedef, out)

    def init(params: jax.Array):
        return jax.vmap(tx.init)(params)

    def update(grads: jax.Array, state, params: jax.Array):
        return jax.vmap(tx.update)(grads, state, params)

    def unpack(cols: jax.Array, dim: int):
        return unpack_for(dim, cols)

    # state_init needs a dim to evaluate tx.init; every shipped optimizer starts constant
    # whatever the dim, so a probe with dim=1 gives the value.
    return RowOptimizer(init, update, state_dim, row_layout(1)[3], pack, unpack, name)


def row_adagrad(learning_rate: float, initial_accumulator_value: float = 0.1,
                eps: float = 1e-10) -> RowOptimizer:
    """Row-wise AdaGrad (Duchi et al., JMLR 2011): ``optax.adagrad`` per row.

    State: the per-coordinate accumulator of squared gradients (state_dim = dim),
    starting at ``initial_accumulator_value`` (0 gives PyTorch's Adagrad: the first step of a
    coordinate is about ``learning_rate * sign(grad)`` whatever the gradient's scale; a
    coordinate whose accumulator is still 0 is not moved). Numerically the same as ``optax.adagrad``
    on the dense table, since AdaGrad is element-wise and untouched rows have zero gradient.
    """
    if initial_accumulator_value < 0:
        raise InputError("row_adagrad: initial_accumulator_value must be >= 0, got "
                         f"{initial_accumulator_value}")
    return row_optimizer(optax.adagrad(learning_rate, initial_accumulator_value, eps),
                         name="adagrad")


def row_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-8) -> RowOptimizer:
    """Lazy (sparse) Adam (Kingma & Ba, ICLR 2015): ``optax.adam`` per row.

    State: first and second moments and a per-row step count (state_dim = 2 * dim + 1),
    all starting at 0. Only the rows a batch touches advance their moments and count,
    as in TensorFlow's LazyAdam; equal to dense ``optax.adam`` when every row is touched
    at every step.
    """
    return row_optimizer(optax.adam(learning_rate, b1, b2, eps), name="adam")


ROW_OPTIMIZERS = {"adagrad": row_adagrad, "adam": row_adam}
