"""Learning-rate schedules (train/kge/schedules.py): the factor of every batch, ReduceLROnPlateau
on valid MRR, and the trainer's lr_scale step argument (an exact learning rate, no recompile)."""

from __future__ import annotations

import json

import numpy as np
import optax
import pytest

from jaxps import ParameterServer, SparseTrainer, row_adagrad, row_adam
from tests.test_trainer import TOL, loss_fn, ps_batches, raw_batches, tables
from train.kge import synthetic
from train.kge.config import parse_args
from train.kge.schedules import LrSchedule
from train.kge.train import run


def config(*flags):
    return parse_args(["--lr", "0.2", "--epochs", "4", *flags])


def test_none_is_one():
    s = LrSchedule(config(), batches_per_epoch=3)
    assert [s.scale(e)(i) for e in (1, 4) for i in range(3)] == [1.0] * 6
    assert s.lr(2) == 0.2


def test_cosine_per_batch_and_epoch():
    s = LrSchedule(config("--lr-schedule", "cosine"), batches_per_epoch=5)
    ref = optax.cosine_decay_schedule(1.0, decay_steps=20)
    got = [s.scale(e)(i) for e in range(1, 5) for i in range(5)]
    np.testing.assert_allclose(got, [float(ref(t)) for t in range(20)], rtol=1e-6)
    assert got[0] == 1.0 and got == sorted(got, reverse=True) and got[-1] < 0.01
    np.testing.assert_allclose([s.lr(e) for e in range(1, 5)],
                               [0.2 * float(ref(5 * (e - 1))) for e in range(1, 5)], rtol=1e-6)
    # A run resumed after 2 batches of epoch 3 continues at step 12.
    assert s.scale(3, first_batch=2)(0) == pytest.approx(float(ref(12)))


def test_warmup_then_cosine():
    s = LrSchedule(config("--lr-schedule", "warmup_cosine", "--warmup-epochs", "1"),
                   batches_per_epoch=4)
    got = [s.scale(e)(i) for e in range(1, 5) for i in range(4)]
    np.testing.assert_allclose(got[:5], [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    assert got[4:] == sorted(got[4:], reverse=True) and got[-1] < 0.05


def test_plateau_drops_after_patience_and_replays():
    s = LrSchedule(config("--lr-schedule", "plateau", "--lr-patience", "2", "--lr-factor",
                          "0.5"), batches_per_epoch=3)
    mrrs = [0.1, 0.2, 0.2, 0.2, 0.2, 0.19, 0.3, 0.3, 0.3, 0.3]
    factors, drops = [], []
    for m in mrrs:
        drops.append(s.observe(m))
        factors.append(s.scale(1)(0))
    assert factors == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert drops == [False] * 4 + [True] + [False] * 4 + [True]
    again = LrSchedule(config("--lr-schedule", "plateau", "--lr-patience", "2",
                              "--lr-factor", "0.5"), batches_per_epoch=3)
    again.replay([{"epoch": i + 1, "valid": {"mrr": m}} for i, m in enumerate(mrrs)]
                 + [{"epoch": 11}])
    assert (again.factor, again.best, again.bad) == (s.factor, s.best, s.bad)
    assert s.lr(1) == 0.2 * 0.25


def test_plateau_needs_validation():
    with pytest.raises(SystemExit):
        parse_args(["--lr-schedule", "plateau", "--eval-every", "0"])


def _train(lr_a, lr_b, scale):
    raw = raw_batches(0, 12)
    with ParameterServer(tables()) as ps:
        trainer = SparseTrainer(ps, loss_fn, {"a": row_adagrad(lr_a, 0.1), "b": row_adam(lr_b)},
                                min_bucket=8, max_keys={"a": 40, "b": 40})
        for _ in range(2):
            trainer.train_epoch(ps_batches(raw), lr_scale=scale)
        return {t: ps.pull(t, np.arange(s.num_keys)) for t, s in tables().items()}, trainer


def test_lr_scale_is_the_learning_rate_and_never_recompiles():
    half, trainer = _train(0.2, 0.05, 0.5)
    direct, _ = _train(0.1, 0.025, 1.0)
    for t in half:
        np.testing.assert_allclose(half[t], direct[t], **TOL)
    # A different factor for every batch: still the one compilation.
    varying, trainer = _train(0.2, 0.05, lambda i: 1.0 / (1 + i))
    assert trainer.compiles == 1
    assert not np.allclose(varying["a"], half["a"])


def test_run_records_the_lr_of_each_epoch(tmp_path):
    folder = synthetic.write_dataset(tmp_path / "g", synthetic.generate(200, 5, 3000, seed=4))
    out = tmp_path / "out"
    run(parse_args(["--data", str(folder), "--dim", "16", "--epochs", "3", "--batch-size",
                    "256", "--negatives", "32", "--max-eval", "50", "--no-progress",
                    "--lr-schedule", "cosine", "--lr", "0.3", "--out", str(out)]))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = -(-2400 // 256)  # 10 batches
    ref = optax.cosine_decay_schedule(0.3, decay_steps=3 * per_epoch)
    np.testing.assert_allclose([x["lr"] for x in lines],
                               [float(ref(per_epoch * e)) for e in range(3)], rtol=1e-5)
    assert all(x["compiles"] == 1 for x in lines)
