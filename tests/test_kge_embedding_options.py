"""Embedding options of train.kge: dropout with separate entity and relation rates
(``--dropout``, ``--relation-dropout``, as LibKGE's configs set them): each rate reaches its
own rows, and ``--relation-dropout -1`` trains exactly as one shared rate did; and the
initialization (``--init normal|uniform``, ``--init-scale``, ``--init-mean``) that reaches
the PS tables."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import models
from train.kge.config import dropout_rates, parse_args
from train.kge.train import epoch_batches, make_loss
from train.kge.train_types import dropout

TRIPLES = np.array([[0, 0, 1], [0, 0, 2], [1, 0, 2], [2, 1, 0], [3, 1, 0], [4, 2, 3]])


def loss_and_grads(*options: str, model: str = "transe"):
    config = parse_args(["--model", model, "--dim", "8", "--batch-size", "6", "--negatives",
                         "2", "--reciprocal", *options])
    batch = next(epoch_batches(TRIPLES, 6, config, epoch=1, rank=0, size=1,
                               num_relations=3))
    rng = np.random.default_rng(0)
    rows = {t: rng.standard_normal((len(k), 8)).astype(np.float32)
            for t, k in batch.keys.items()}
    loss_fn = make_loss(models.get_model(model), config)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(rows, batch.data)
    return loss, grads, batch.data


def test_rates():
    assert dropout_rates(parse_args(["--dropout", "0.5"])) == (0.5, 0.5)
    assert dropout_rates(parse_args(["--dropout", "0.5", "--relation-dropout", "0.2"])) == (
        0.5, 0.2)
    assert dropout_rates(parse_args(["--relation-dropout", "0.3"])) == (0.0, 0.3)


def test_bad_rate_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--relation-dropout", "-0.5"])
    assert "--relation-dropout must be -1 (the same as --dropout) or in [0, 1)" in (
        capsys.readouterr().err)


def test_dropout_helper():
    x = np.ones((200, 50), np.float32)
    assert dropout(jax.random.PRNGKey(0), x, 0.0) is x
    y = np.asarray(dropout(jax.random.PRNGKey(0), x, 0.25))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean(y == 0) - 0.25) < 0.02


def test_minus_one_is_the_shared_rate_bit_for_bit():
    (a, ga, _), (b, gb, _) = loss_and_grads("--dropout", "0.4"), loss_and_grads(
        "--dropout", "0.4", "--relation-dropout", "0.4")
    assert float(a) == float(b)
    for t in ga:
        np.testing.assert_array_equal(ga[t], gb[t])


def test_each_rate_reaches_its_own_rows():
    # TransE, -||s + p - o||: with (nearly) every relation component dropped, relation rows
    # get no gradient while entity rows still do; and the other way round for the heads and
    # tails (negatives are never dropped: only the batch's triples).
    _, g, _ = loss_and_grads("--dropout", "0", "--relation-dropout", "0.999999")
    assert not np.any(g["relation"]) and np.any(g["entity"])
    _, g, data = loss_and_grads("--dropout", "0.999999", "--relation-dropout", "0")
    positives = np.setdiff1d(np.concatenate([data["s"], data["o"]]), data["neg"])
    assert len(positives) and np.any(g["relation"])
    assert not np.any(np.asarray(g["entity"])[positives])
    _, g0, _ = loss_and_grads("--dropout", "0", "--relation-dropout", "0")
    assert np.any(g0["relation"]) and np.any(np.asarray(g0["entity"])[positives])


@pytest.mark.parametrize("init,mean,check", [
    ("uniform", 0.0, lambda x, s: np.abs(x).max() <= s and np.abs(x).max() > 0.9 * s),
    ("uniform", 0.5, lambda x, s: x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.95),
    ("normal", 0.0, lambda x, s: abs(float(np.std(x)) - s) < 0.05 * s),
    # the relation table has 14 x 16 values: 0.15 is 4.5 standard errors of their mean
    ("normal", -1.0, lambda x, s: abs(float(np.mean(x)) + 1.0) < 0.15)])
def test_init_reaches_the_tables(init, mean, check):
    """``--init uniform`` (LibKGE's uniform_) fills U(m - s, m + s), ``normal`` N(m, s^2)."""
    import jaxps
    from train.kge.train import make_tables

    config = parse_args(["--init", init, "--init-scale", "0.5", "--init-mean", str(mean),
                         "--dim", "16"])

    class Dataset:  # make_tables reads only the sizes
        num_entities, num_relations = 400, 7

    tables, _ = make_tables(models.get_model("complex"), Dataset(), config)
    for name, spec in tables.items():
        assert spec.init == init
        x = jaxps.initial_table(spec, name)[:, :spec.dim]
        assert check(x, 0.5), (name, init)
