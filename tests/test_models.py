"""Tests of models/: batched scoring equals one-by-one scoring, shapes, jit, known values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import MODELS, KgeModel, get_model, make_complex, make_rotate, make_transe

# Every registered model, plus the variants whose batched scoring takes another code path:
# TransE's L2 matmul expansion, and chunk sizes that leave a remainder chunk.
VARIANTS: dict[str, KgeModel] = {
    **MODELS,
    "transe_l2": make_transe(norm=2),
    "transe_chunk3": make_transe(chunk_size=3),
    "rotate_chunk3": make_rotate(chunk_size=3),
}
TOL = dict(rtol=1e-5, atol=1e-5)  # float32, scores of magnitude ~10


def _rows(model: KgeModel, dim: int, seed: int, batch: int, num_all: int):
    """Random rows (s [B, We], p [B, Wr], o [B, We], all [N, We]) as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    entities = lambda n: rng.standard_normal((n, model.entity_width(dim)), dtype=np.float32)
    p = rng.standard_normal((batch, model.relation_width(dim)), dtype=np.float32)
    return entities(batch), p, entities(batch), entities(num_all)


def _one_by_one(model: KgeModel, s, p, o, all_rows):
    """Reference [B, N] scores of (s_b, p_b, all_n) and (all_n, p_b, o_b), one triple per call."""
    spo = jax.jit(model.score_spo)  # jit only to keep the B*N single-triple calls fast
    sp_ = [[spo(s[b], p[b], all_rows[n]) for n in range(len(all_rows))] for b in range(len(s))]
    _po = [[spo(all_rows[n], p[b], o[b]) for n in range(len(all_rows))] for b in range(len(s))]
    return np.array(sp_), np.array(_po)


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=5, deadline=None)
@given(
    # (batch, num_all, dim): few distinct shapes, as each costs compilations on a 2-core CI.
    shape=st.sampled_from([(1, 1, 2), (3, 4, 6)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_batched_scoring_equals_one_by_one(name, shape, seed):
    model = VARIANTS[name]
    batch, num_all, dim = shape
    s, p, o, all_rows = _rows(model, dim, seed, batch, num_all)
    want_sp_, want__po = _one_by_one(model, s, p, o, all_rows)
    # jit only for speed here; test_jit_gives_same_scores compares jit with eager.
    np.testing.assert_allclose(jax.jit(model.score_sp_)(s, p, all_rows), want_sp_, **TOL)
    np.testing.assert_allclose(jax.jit(model.score__po)(all_rows, p, o), want__po, **TOL)
    # score_spo broadcasting over leading dims gives the same [B, N] table.
    broadcast = jax.jit(lambda s, p, o: model.score_spo(s[:, None], p[:, None], o[None]))
    np.testing.assert_allclose(broadcast(s, p, all_rows), want_sp_, **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name):
    model, batch, num_all, negatives, dim = MODELS[name], 2, 7, 3, 4
    we, wr = model.entity_width(dim), model.relation_width(dim)
    rows = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # shapes only, no compile
    s, p, o, all_rows = rows(batch, we), rows(batch, wr), rows(batch, we), rows(num_all, we)
    s1, p1, per_example = rows(batch, 1, we), rows(batch, 1, wr), rows(batch, negatives, we)
    shape = lambda f, *args: jax.eval_shape(f, *args).shape
    assert shape(model.score_spo, s, p, o) == (batch,)
    assert shape(model.score_spo, s1, p1, per_example) == (batch, negatives)
    assert shape(model.score_sp_, s, p, all_rows) == (batch, num_all)
    assert shape(model.score__po, all_rows, p, o) == (batch, num_all)


@pytest.mark.parametrize("name", [*MODELS, "transe_l2"])
def test_jit_gives_same_scores(name):
    model = VARIANTS[name]
    s, p, o, all_rows = _rows(model, 4, 1, 3, 5)
    for mode, args in [
        (model.score_spo, (s, p, o)),
        (model.score_sp_, (s, p, all_rows)),
        (model.score__po, (all_rows, p, o)),
    ]:
        np.testing.assert_allclose(jax.jit(mode)(*args), mode(*args), **TOL)


# Only the models whose batched modes are not matmuls: chunked L1 / moduli, the L2 expansion.
@pytest.mark.parametrize("name", ["transe_chunk3", "transe_l2", "rotate_chunk3"])
def test_batched_gradients_equal_broadcast_gradients(name):
    """score_sp_ and score__po differentiate like the broadcast score_spo they replace."""
    model = VARIANTS[name]

    def batched_and_broadcast(s, p, o, all_rows):
        batched = model.score_sp_(s, p, all_rows) + model.score__po(all_rows, p, o)
        broadcast = model.score_spo(s[:, None], p[:, None], all_rows[None]) + model.score_spo(
            all_rows[None], p[:, None], o[:, None]
        )
        return jnp.sum(batched), jnp.sum(broadcast)

    jacobian = jax.jit(jax.jacrev(batched_and_broadcast, argnums=(0, 1, 2, 3)))
    got, want = jacobian(*_rows(model, 4, 2, 3, 5))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL)


def _all_modes(model: KgeModel, s, p, o) -> list[float]:
    """The score of one triple (s, p, o) from each of the three scoring modes."""
    s, p, o = (jnp.asarray([x], dtype=jnp.float32) for x in (s, p, o))
    return [
        float(model.score_spo(s, p, o)[0]),
        float(model.score_sp_(s, p, o)[0, 0]),
        float(model.score__po(s, p, o)[0, 0]),
    ]


@pytest.mark.parametrize(
    "name, s, p, o, want",
    [
        ("distmult", [1.0] * 4, [1.0] * 4, [1.0] * 4, 4.0),
        ("distmult", [1.0, 2.0], [3.0, 4.0], [5.0, 6.0], 1 * 3 * 5 + 2 * 4 * 6),
        # ComplEx, one complex number [re | im]: Re(1 * i * conj(i)) = 1, Re(1 * i * conj(1)) = 0.
        ("complex", [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], 1.0),
        ("complex", [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], 0.0),
        # (1+2i)(3+4i) conj(5+6i) = (-5+10i)(5-6i) = 35+80i.
        ("complex", [1.0, 2.0], [3.0, 4.0], [5.0, 6.0], 35.0),
        # RESCAL: W = [[0, 2], [0, 0]] row-major; e0^T W e1 = 2, e1^T W e0 = 0.
        ("rescal", [1.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 1.0], 2.0),
        ("rescal", [0.0, 1.0], [0.0, 2.0, 0.0, 0.0], [1.0, 0.0], 0.0),
        ("transe", [1.0, 2.0], [1.0, 1.0], [0.0, 0.0], -5.0),
        ("transe_l2", [1.0, 2.0], [1.0, 1.0], [0.0, 0.0], -math.sqrt(13.0)),
        ("transe_l2", [1.0, 2.0], [1.0, 1.0], [2.0, 3.0], 0.0),
        # RotatE: 1 rotated by pi/2 is i; |i - i| = 0, |i - 1| = sqrt(2).
        ("rotate", [1.0, 0.0], [math.pi / 2], [0.0, 1.0], 0.0),
        ("rotate", [1.0, 0.0], [math.pi / 2], [1.0, 0.0], -math.sqrt(2.0)),
        # Zero phases: -(|1+0i - 0| + |0+1i - (3+5i)|) = -(1 + 5).
        ("rotate", [1.0, 0.0, 0.0, 1.0], [0.0, 0.0], [0.0, 3.0, 0.0, 5.0], -6.0),
    ],
)
def test_known_values(name, s, p, o, want):
    np.testing.assert_allclose(_all_modes(VARIANTS[name], s, p, o), [want] * 3, atol=1e-5)


def test_complex_imaginary_relation_is_antisymmetric():
    model = make_complex()
    s, p, o, _ = _rows(model, 6, 3, 4, 1)
    p[:, :3] = 0.0  # purely imaginary: Re(o p conj(s)) = -Re(s p conj(o))
    np.testing.assert_allclose(model.score_spo(o, p, s), -model.score_spo(s, p, o), **TOL)


def test_transe_l2_gradient_finite_at_zero_distance():
    model = make_transe(norm=2)
    s, p = jnp.ones((1, 4)), jnp.ones((1, 4))
    o = s + p
    for f, args in [(model.score_spo, (s, p, o)), (model.score_sp_, (s, p, o))]:
        grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2)))(*args)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_get_model():
    assert set(MODELS) == {"complex", "distmult", "rescal", "transe", "rotate"}
    assert all(get_model(name) is model and model.name == name for name, model in MODELS.items())
    with pytest.raises(ValueError, match="complex, distmult, rescal, rotate, transe"):
        get_model("transh")


@pytest.mark.parametrize("name", ["complex", "rotate"])
def test_odd_dim_is_rejected(name):
    model = get_model(name)
    with pytest.raises(ValueError, match="dim must be even"):
        model.entity_width(5)
    with pytest.raises(ValueError, match="even width"):
        model.score_spo(*(jnp.ones((2, 5)),) * 3)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="norm must be 1"):
        make_transe(norm=3)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        make_rotate(chunk_size=0)
    rescal = get_model("rescal")
    assert (rescal.entity_width(3), rescal.relation_width(3)) == (3, 9)
    with pytest.raises(ValueError, match="dim\\*dim = 9"):
        rescal.score_spo(jnp.ones(3), jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="use score_spo"):
        get_model("distmult").score_sp_(jnp.ones((2, 1, 4)), jnp.ones((2, 1, 4)), jnp.ones((5, 4)))
