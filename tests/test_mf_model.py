"""models.mf against a numpy reference; one trainer step equals Surprise's SGD update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxps
from models import mf
from train.mf.config import MfConfig
from train.mf.data import Ratings, make_dataset
from train.mf.evaluate import errors
from train.mf.schedules import batches
from train.mf.train import make_loss, make_tables

DIM = 6


def _rows(rng, n):
    return rng.normal(0, 0.3, (n, DIM + 1)).astype(np.float32)


def test_predict_and_loss_match_numpy():
    rng = np.random.default_rng(0)
    u, i = _rows(rng, 5), _rows(rng, 5)
    y = rng.uniform(1, 5, 5).astype(np.float32)
    w = np.array([1, 1, 0, 1, 1], np.float32)
    pred = 3.5 + u[:, -1] + i[:, -1] + np.einsum("bd,bd->b", u[:, :-1], i[:, :-1])
    np.testing.assert_allclose(mf.predict(u, i, 3.5), pred, rtol=1e-5)
    want = np.sum(w * (0.5 * (pred - y) ** 2 + 0.5 * 0.1 * ((u ** 2).sum(1) + (i ** 2).sum(1))))
    np.testing.assert_allclose(mf.loss(u, i, y, w, mean=3.5, reg=0.1), want, rtol=1e-5)
    np.testing.assert_allclose(errors(u, i, y, 3.5, (1.0, 5.0)), np.clip(pred, 1, 5) - y,
                               rtol=1e-6)


def test_gradient_is_the_sum_of_per_rating_sgd_gradients():
    """Rows shared by several ratings get the sum of Surprise's per-rating gradients."""
    rng = np.random.default_rng(1)
    rows = {"user": _rows(rng, 3), "item": _rows(rng, 4)}
    data = {"u": np.array([0, 0, 2, 1], np.int32), "i": np.array([3, 1, 3, 0], np.int32),
            "y": np.array([4, 2, 5, 1], np.float32), "w": np.array([1, 1, 1, 0], np.float32)}
    loss_fn = make_loss(3.0, 0.05)
    value, grads = jax.value_and_grad(loss_fn)(rows, data)
    want = {t: np.zeros_like(r, np.float64) for t, r in rows.items()}
    total = 0.0
    for b in range(3):  # the 4th has weight 0
        p, q = rows["user"][data["u"][b]].astype(np.float64), rows["item"][data["i"][b]]
        err = 3.0 + p[-1] + q[-1] + p[:-1] @ q[:-1] - data["y"][b]
        total += 0.5 * err ** 2 + 0.025 * (p @ p + q @ q)
        gp = np.append(err * q[:-1], err) + 0.05 * p
        gq = np.append(err * p[:-1], err) + 0.05 * q
        want["user"][data["u"][b]] += gp
        want["item"][data["i"][b]] += gq
    np.testing.assert_allclose(value, total / 3, rtol=1e-5)   # reported: mean per rating
    for t in rows:
        np.testing.assert_allclose(grads[t], want[t], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise-adagrad", "adam"])
def test_one_trainer_step(optimizer):
    """Through the PS and SparseTrainer: with sgd, Surprise's update
    p_u += lr * (e * q_i - reg * p_u), b_u += lr * (e - reg * b_u), e = r - r_hat."""
    train = Ratings(np.array([1]), np.array([2]), np.array([4.0], np.float32))
    dataset = make_dataset("one", np.arange(3), np.arange(4), {"train": train})
    config = MfConfig(dim=DIM, lr=0.01, reg=0.02, optimizer=optimizer)
    tables, opts = make_tables(dataset, config)
    with jaxps.ParameterServer(tables, technique="classic") as ps:
        p0, q0 = ps.pull("user", [1])[0, :DIM + 1], ps.pull("item", [2])[0, :DIM + 1]
        before = ps.pull("user", [0])
        trainer = jaxps.SparseTrainer(ps, make_loss(3.0, config.reg), opts)
        m = trainer.train_epoch(batches(train, np.array([0]), 4, 3, 4))
        p1, q1 = ps.pull("user", [1])[0, :DIM + 1], ps.pull("item", [2])[0, :DIM + 1]
        untouched = ps.pull("user", [0])
    assert m.examples == 1
    np.testing.assert_array_equal(untouched, before)
    e = 4.0 - (3.0 + p0[-1] + q0[-1] + p0[:-1] @ q0[:-1])
    if optimizer == "sgd":
        np.testing.assert_allclose(p1[:-1], p0[:-1] + 0.01 * (e * q0[:-1] - 0.02 * p0[:-1]),
                                   rtol=1e-5)
        np.testing.assert_allclose(p1[-1], p0[-1] + 0.01 * (e - 0.02 * p0[-1]), rtol=1e-5)
        np.testing.assert_allclose(q1[:-1], q0[:-1] + 0.01 * (e * p0[:-1] - 0.02 * q0[:-1]),
                                   rtol=1e-5)
    else:  # adaptive optimizers: every coordinate moves against its gradient
        grad_p = -np.append(e * q0[:-1], e) + 0.02 * p0
        assert np.all(np.sign(p1 - p0) == -np.sign(grad_p))


def test_batches_pad_and_index():
    train = Ratings(np.array([5, 3, 5, 7]), np.array([1, 1, 2, 0]),
                    np.array([1, 2, 3, 4], np.float32))
    out = list(batches(train, np.array([0, 1, 2, 3]), 3, 8, 3))
    assert [b.num_examples for b in out] == [3, 1]
    b = out[0]
    assert b.keys["user"].tolist() == [3, 5] and b.keys["item"].tolist() == [1, 2]
    np.testing.assert_array_equal(b.keys["user"][b.data["u"]], [5, 3, 5])
    np.testing.assert_array_equal(b.keys["item"][b.data["i"]], [1, 1, 2])
    last = out[1]
    assert last.data["w"].tolist() == [1, 0, 0] and last.data["y"].shape == (3,)
    np.testing.assert_array_equal(last.keys["user"][last.data["u"]], [7, 7, 7])
    # a large id range takes np.unique's path; same result
    wide = list(batches(train, np.array([0, 1, 2]), 3, 10_000, 3))[0]
    np.testing.assert_array_equal(wide.keys["user"], b.keys["user"])
    np.testing.assert_array_equal(wide.data["u"], b.data["u"])


def test_row_width():
    assert mf.row_width(100) == 101
    with pytest.raises(ValueError, match="dim must be a positive"):
        mf.row_width(0)
    assert jnp.asarray(mf.predict(np.zeros((2, 3)), np.zeros((2, 3)), 2.0)).tolist() == [2, 2]
