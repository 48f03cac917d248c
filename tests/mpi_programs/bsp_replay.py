"""The serial reference of a bulk-synchronous run, shared by the lockstep checks.

``replay(problem, sources, sizes)`` trains in one process what N lockstep ranks train:
per step, every rank that still has a batch reads its rows from the same state, then every
such rank's deltas are added (the order of the additions is the ranks', as the owners add
them). ``sources``: one batch iterator per rank; ``sizes``: the padded rows per table.
"""

import jax
import numpy as np

import jaxps


def replay(problem, sources: list, sizes: dict) -> dict:
    """The tables (name -> float32 [num_keys, width]) after every source is exhausted."""
    dims = {t: s.dim for t, s in problem.tables.items()}
    step = jax.jit(lambda rows, data: jaxps.loss_and_row_deltas(
        problem.loss_fn, problem.optimizers, dims, rows, data))
    state = {t: jaxps.initial_table(s, t) for t, s in problem.tables.items()}
    sources = [iter(s) for s in sources]
    while True:
        batches = [b for b in (next(src, None) for src in sources) if b is not None]
        if not batches:
            return state
        all_deltas = []
        for b in batches:
            rows = {}
            for t, keys in b.keys.items():
                buf = np.zeros((sizes[t], state[t].shape[1]), np.float32)
                buf[:len(keys)] = state[t][keys]
                rows[t] = buf
            all_deltas.append(step(rows, b.data)[1])
        for b, deltas in zip(batches, all_deltas):
            for t, keys in b.keys.items():
                state[t][keys] += np.asarray(deltas[t])[:len(keys)]
