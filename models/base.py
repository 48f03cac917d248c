"""The KGE model interface and the helpers its models share.

A model is a pure function of already-pulled dense rows: the parameter server, I/O and
global state never enter `models/`. Each model file builds one `KgeModel`.

Row layout follows LibKGE: `dim` is the real size of an entity row, so a complex model with
dim=256 stores 128 complex numbers as [real parts (128) | imaginary parts (128)].
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class KgeModel(NamedTuple):
    """A KGE model: widths of its rows and its three scoring modes. All functions are pure, jit-able."""
    name: str
    entity_width: Callable[[int], int]    # dim -> width of one entity row (LibKGE convention: dim is the real size, ComplEx dim=256 means 128 complex numbers)
    relation_width: Callable[[int], int]  # dim -> width of one relation row (RESCAL: dim*dim; RotatE: dim//2 phases)
    score_spo: Callable  # (s [..., We], p [..., Wr], o [..., We]) -> [...]  broadcasting over leading dims (so per-example negatives: s [B,1,We], p [B,1,Wr], o [B,K,We] -> [B,K])
    score_sp_: Callable  # (s [B, We], p [B, Wr], o_all [N, We]) -> [B, N]  score every candidate object (used for ranking and batch-shared negatives); must be a matmul-style computation, not a broadcast of score_spo, for speed
    score__po: Callable  # (s_all [N, We], p [B, Wr], o [B, We]) -> [B, N]  every candidate subject


def check_dim(model: str, dim: int, *, even: bool = False) -> int:
    """Returns `dim` after checking it is a positive (and, if asked, even) integer."""
    if dim < 1:
        raise ValueError(f"{model}: dim must be a positive integer, got {dim}.")
    if even and dim % 2:
        raise ValueError(
            f"{model}: dim must be even (a row holds real and imaginary halves), got {dim}; "
            f"use dim={dim + 1} for {(dim + 1) // 2} complex numbers."
        )
    return dim


def complex_halves(model: str, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Splits rows [..., 2k] into real [..., k] and imaginary [..., k] parts."""
    width = x.shape[-1]
    if width % 2:
        raise ValueError(
            f"{model}: entity rows must have even width [real | imag], got shape {x.shape}; "
            "pull rows of width model.entity_width(dim) with an even dim."
        )
    return x[..., : width // 2], x[..., width // 2 :]


def check_all_mode(
    model: str, mode: str, batch: tuple[jax.Array, jax.Array], all_rows: jax.Array
) -> None:
    """Checks the shapes of score_sp_ / score__po: two [B, W] batch arrays, one [N, We] table."""
    if any(x.ndim != 2 for x in (*batch, all_rows)) or batch[0].shape[0] != batch[1].shape[0]:
        shapes = [x.shape for x in batch] + [all_rows.shape]
        raise ValueError(
            f"{model}.{mode}: expected two [B, W] batch arrays and one [N, We] candidate table, "
            f"got shapes {shapes}; for per-example candidates [B, K, We] use score_spo with "
            "the batch arrays reshaped to [B, 1, W]."
        )


def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)) with gradient 0, not NaN, where x <= 0 (the distance of equal rows)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


# jit with `distance` static: eager callers then reuse one compilation per shape, where a bare
# lax.map would re-trace and re-compile its body on every call. Pass a module-level function
# as `distance` (a fresh lambda or partial each call defeats the cache).
@functools.partial(jax.jit, static_argnames=("distance", "chunk_size"))
def chunked_distances(
    distance: Callable[[jax.Array, jax.Array], jax.Array],
    queries: jax.Array,
    candidates: jax.Array,
    *,
    chunk_size: int,
) -> jax.Array:
    """Returns [B, N] with entry (b, n) = distance(queries[b], candidates[n]).

    For distances without a matmul form (L1, sums of complex moduli). `distance` maps
    ([B, W], [W]) -> [B]; chunk_size candidates are scored at a time, so temporaries are
    [chunk_size, B, W] instead of [N, B, W]. Each chunk is rematerialized in the backward pass
    (jax.checkpoint), so gradients are bounded by the same size.
    """
    per_candidate = jax.checkpoint(lambda c: distance(queries, c))
    return jax.lax.map(per_candidate, candidates, batch_size=chunk_size).T
