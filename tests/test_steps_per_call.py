"""Several batches per jitted call (``steps_per_call``, jaxps/_src/fused.py).

On one rank a call of K batches trains exactly what K calls of one batch train (the same
losses, the same rows to float32 rounding), for every technique and for DenseTrainer,
also when the batch count is not a multiple of K, when a batch's data shape differs
from the call's, and with a learning-rate schedule. A NaN pushes nothing of the call;
intents carry the call's key union; max_keys still compiles once, up front. The 2-4 rank
no-lost-update check of every technique with K > 1 is in tests/mpi_suite/test_fused.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxps
from jaxps import TECHNIQUES, InputError, ParameterServer
from jaxps._src.dense import DenseTrainer
from jaxps._src.trainer import SparseTrainer
from tests.test_trainer import (TOL, _RecordingPs, loss_fn, optimizers, ps_batches,
                                raw_batches, tables, technique_of)


def _mixed(raw):
    """ps_batches of ``raw``, with the 6th batch cut to 8 examples (another data shape)."""
    raw = list(raw)
    i, j, y = raw[5]
    raw[5] = (i[:8], j[:8], y[:8])
    return raw


def _train(technique, raw, k, *, epochs=2, lr_scale=1.0, **kw):
    """Rows and per-batch losses after ``epochs`` passes over ``raw`` on one rank."""
    losses = []
    with ParameterServer(tables(), technique=technique_of(technique)) as ps:
        trainer = SparseTrainer(ps, loss_fn, optimizers(), min_bucket=8, steps_per_call=k,
                                **kw)
        metrics = [trainer.train_epoch(ps_batches(raw), lr_scale=lr_scale,
                                       on_batch=lambda n, x: losses.append(x))
                   for _ in range(epochs)]
        rows = {t: ps.pull(t, np.arange(spec.num_keys)) for t, spec in tables().items()}
    return rows, losses, metrics


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_k_batches_per_call_train_as_one_per_call(technique):
    raw = _mixed(raw_batches(3, 13))   # 13 = 3 x 4 + 1: a short call at the end
    one, losses1, m1 = _train(technique, raw, 1)
    four, losses4, m4 = _train(technique, raw, 4)
    assert len(losses4) == len(losses1) == 26
    np.testing.assert_allclose(losses4, losses1, **TOL)
    for t in one:
        np.testing.assert_allclose(four[t], one[t], **TOL, err_msg=t)
    assert [m.batches for m in m4] == [13, 13]
    assert m4[0].examples == m1[0].examples == 12 * 16 + 8
    # The epoch's weighted mean loss is the same too.
    np.testing.assert_allclose([m.loss for m in m4], [m.loss for m in m1], **TOL)


def test_a_schedule_sees_each_batch_index():
    raw = raw_batches(4, 10)
    schedule = lambda i: 1.0 / (1 + i)  # noqa: E731
    one, losses1, _ = _train("classic", raw, 1, lr_scale=schedule)
    three, losses3, _ = _train("classic", raw, 3, lr_scale=schedule)
    np.testing.assert_allclose(losses3, losses1, **TOL)
    for t in one:
        np.testing.assert_allclose(three[t], one[t], **TOL, err_msg=t)
    # ... and a different schedule trains something else (the check can fail).
    flat, _, _ = _train("classic", raw, 3)
    assert not np.allclose(flat["a"], three["a"], **TOL)


def test_more_calls_per_epoch_means_fewer_clocks():
    raw = raw_batches(5, 12)
    with ParameterServer(tables()) as ps:
        SparseTrainer(ps, loss_fn, optimizers(), steps_per_call=4).train_epoch(ps_batches(raw))
        assert ps.clock == 3   # one tick per call


def test_a_call_sums_its_deltas_in_the_last_call_s_buffer():
    """The delta buffers are donated to each call and reused in place (a fresh [S, width]
    result per call made XLA's scan about twice as slow on kge-zipf-small)."""
    with ParameterServer(tables()) as ps:
        trainer = SparseTrainer(ps, loss_fn, optimizers(), steps_per_call=4)
        trainer.train_epoch(ps_batches(raw_batches(1, 8)))
        before = {t: a.unsafe_buffer_pointer() for t, a in trainer._acc.items()}
        trainer.train_epoch(ps_batches(raw_batches(2, 8)))
        after = {t: a.unsafe_buffer_pointer() for t, a in trainer._acc.items()}
    assert before and before == after


def test_max_keys_compiles_once_up_front_with_k():
    raw = raw_batches(1, 30, spread=(3, 40))
    with ParameterServer(tables()) as ps:
        before = {t: ps.pull(t, np.arange(spec.num_keys)) for t, spec in ps.tables.items()}
        trainer = SparseTrainer(ps, loss_fn, optimizers(), min_bucket=4, steps_per_call=4,
                                max_keys={"a": 40, "b": 40})
        assert trainer.compile(next(iter(ps_batches(raw)))) == 1
        for t, rows in before.items():  # compile() pushed nothing
            np.testing.assert_array_equal(ps.pull(t, np.arange(len(rows))), rows)
        epoch = trainer.train_epoch(ps_batches(raw))   # 30 = 7 x 4 + 2
        assert epoch.new_compiles == 0 and trainer.compiles == 1 and epoch.batches == 30


def test_nan_in_a_call_pushes_nothing_of_it():
    raw = raw_batches(1, 4, spread=(3, 10))
    i, j, y = raw[2]
    raw[2] = (i, j, y + 10.0)   # only the third batch's loss is NaN

    def nan_late(rows, data):
        return loss_fn(rows, data) * jnp.where(data["y"].max() > 5.0, jnp.nan, 1.0)

    with ParameterServer(tables()) as ps:
        before = ps.pull("a", np.arange(ps.tables["a"].num_keys))
        trainer = SparseTrainer(ps, nan_late, optimizers(), steps_per_call=4)
        with pytest.raises(InputError, match="NaN or Inf.*batches 0-3.*nothing of these"):
            trainer.train_epoch(ps_batches(raw))
        np.testing.assert_array_equal(ps.pull("a", np.arange(len(before))), before)


def test_non_finite_deltas_with_a_finite_loss_push_nothing_of_the_call():
    """The check is on the call's summed deltas: a NaN gradient in one batch (its loss is
    finite) must still stop the push of the whole call."""
    raw = raw_batches(1, 4, spread=(3, 10))
    i, j, y = raw[3]
    raw[3] = (i, j, y + 10.0)  # the last batch: no later batch reads its NaN rows

    def nan_grad_late(rows, data):
        x = rows["a"][0, 0]
        # sqrt(|x - x| + 0) in the last batch: the loss term is 0, its gradient 0 * inf.
        off = jnp.where(data["y"].max() > 5.0, 0.0, 1.0)
        return loss_fn(rows, data) + jnp.sqrt(jnp.abs(x - x) + off)

    with ParameterServer(tables()) as ps:
        before = ps.pull("a", np.arange(ps.tables["a"].num_keys))
        trainer = SparseTrainer(ps, nan_grad_late, optimizers(), steps_per_call=4)
        with pytest.raises(InputError, match="NaN or Inf.*batches 0-3.*nothing of these"):
            trainer.train_epoch(ps_batches(raw))
        np.testing.assert_array_equal(ps.pull("a", np.arange(len(before))), before)
        # Without the NaN batch the same loss trains (the check has no false alarm).
        clean = SparseTrainer(ps, nan_grad_late, optimizers(), steps_per_call=4)
        assert np.isfinite(clean.train_epoch(ps_batches(raw[:3])).loss)


def test_window_union_by_bitmap_and_by_sort_agree():
    from jaxps._src import fused
    rng = np.random.default_rng(3)
    for num_keys in (50, 100_000):    # 50: the bitmap; 100,000 keys: the sort
        parts = [np.unique(rng.integers(0, num_keys, n)) for n in (7, 30, 1, 12)]
        parts.append(np.zeros(0, np.int64))
        u, where = fused.union(parts, num_keys)
        np.testing.assert_array_equal(u, np.unique(np.concatenate(parts)))
        assert u.dtype == np.int64 and where.dtype == np.int32
        np.testing.assert_array_equal(u[where], np.concatenate(parts))


def test_a_reordered_window_reads_the_same_keys():
    """fused.reorder (the trainer puts owned keys first on several ranks): every batch
    position still names the same key, and padding positions stay padding. (Training on
    reordered windows: tests/mpi_suite/test_fused.py counts every update on 2-4 ranks.)"""
    from jaxps._src import fused
    from jaxps._src.trainer import _Prepared
    rng = np.random.default_rng(9)
    batches = [_Prepared({"a": np.unique(rng.integers(0, 40, 9))}, {"a": 16},
                         {"x": np.zeros(3)}, 3) for _ in range(3)]
    w = fused.window(batches, 4, {"a": 16}, {"a": 64}, {"a": 40})
    perm = rng.permutation(len(w.keys["a"]))
    r = fused.reorder(w, "a", perm)
    real = w.positions["a"] < len(w.keys["a"])
    np.testing.assert_array_equal(r.keys["a"][r.positions["a"][real]],
                                  w.keys["a"][w.positions["a"][real]])
    np.testing.assert_array_equal(r.positions["a"][~real], w.positions["a"][~real])


def test_intents_carry_the_call_key_union():
    raw = raw_batches(2, 8)
    with _RecordingPs(tables(), technique="adaptive") as ps:
        SparseTrainer(ps, loss_fn, optimizers(), lookahead=1,
                      steps_per_call=2).train_epoch(ps_batches(raw))
        got = [(t, k.tolist(), start, clock) for t, k, start, clock in ps.intents]
    batches = list(ps_batches(raw))
    want = []
    for call in range(4):
        for t in ("a", "b"):
            union = np.union1d(batches[2 * call][0][t], batches[2 * call + 1][0][t])
            # Call c's intent goes out before call c - 1 runs (at clock c - 1; call 0's at 0).
            want.append((t, union.tolist(), call, max(call - 1, 0)))
    assert sorted(got) == sorted(want)


def test_steps_per_call_must_be_a_positive_int():
    with ParameterServer(tables()) as ps:
        for bad in (0, -2, 2.0):
            with pytest.raises(InputError, match="steps_per_call must be an int >= 1"):
                SparseTrainer(ps, loss_fn, optimizers(), steps_per_call=bad)


def test_a_stateless_optax_optimizer_trains():
    """optax.sgd has no state columns (state_dim 0): counted pushes land exactly."""
    sgd = jaxps.row_optimizer(__import__("optax").sgd(1.0), name="sgd")
    spec = jaxps.TableSpec(20, 3, init="zeros", state_dim=sgd.state_dim(3))
    rng = np.random.default_rng(0)
    counts, batches = np.zeros(20), []
    for _ in range(7):
        ids = rng.integers(0, 20, 10)
        np.add.at(counts, ids, 1)
        keys, pos = jaxps.index_batch({"e": ids})
        batches.append((keys, {"pos": pos["e"]}))

    def loss(rows, data):  # gradient -1 per use in column 0: SGD adds the count
        return -jnp.sum(rows["e"][data["pos"], 0])

    for k in (1, 3):
        with ParameterServer({"e": spec}) as ps:
            SparseTrainer(ps, loss, {"e": sgd}, steps_per_call=k).train_epoch(batches)
            np.testing.assert_array_equal(ps.pull("e", np.arange(20))[:, 0], counts)


def _dense(raw, k):
    trainer = DenseTrainer(tables(), loss_fn, optimizers(), min_bucket=8, steps_per_call=k)
    metrics = [trainer.train(ps_batches(raw)) for _ in range(2)]
    return {t: trainer.rows(t) for t in tables()}, metrics


def test_dense_trainer_k_batches_per_call_as_one():
    raw = _mixed(raw_batches(6, 11))
    one, m1 = _dense(raw, 1)
    three, m3 = _dense(raw, 3)
    for t in one:
        np.testing.assert_allclose(three[t], one[t], **TOL, err_msg=t)
    for a, b in zip(m1, m3):
        assert a.batches == b.batches == 11 and a.examples == b.examples
        np.testing.assert_allclose(b.losses, a.losses, **TOL)
    # ... and equals the PS trainer with the same K.
    ps_rows, _, _ = _train("classic", raw, 3)
    for t in one:
        np.testing.assert_allclose(ps_rows[t], three[t], **TOL, err_msg=t)
