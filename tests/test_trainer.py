"""Tests of the sparse trainer and the row optimizers.

Row optimizers equal optax on dense arrays; PS training on 1 rank equals plain local
training; no recompiles after warm-up; intents go out `lookahead` batches ahead; a 2-rank
run (this file is also the 2-rank program: `python tests/test_trainer.py --mpi-child`).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxps
from jaxps import TECHNIQUES, InputError, ParameterServer, TableSpec
from jaxps._src.row_optim import row_adagrad, row_adam
from jaxps._src.trainer import SparseTrainer, bucket_size, index_batch

DIM = 4
TOL = dict(rtol=2e-5, atol=2e-6)


# ----- row optimizers == optax on dense arrays ---------------------------------------------
@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_row_optimizer_equals_optax_when_every_row_is_touched(name):
    row_opt, dense = {"adagrad": (row_adagrad(0.3), optax.adagrad(0.3)),
                      "adam": (row_adam(0.05), optax.adam(0.05))}[name]
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.standard_normal((7, DIM)), jnp.float32)
    cols = jnp.full((7, row_opt.state_dim(DIM)), row_opt.state_init, jnp.float32)
    rows, dense_state = params, dense.init(params)
    assert cols.shape[1] == {"adagrad": DIM, "adam": 2 * DIM + 1}[name]
    for step in range(5):
        grads = jnp.asarray(rng.standard_normal((7, DIM)), jnp.float32)
        updates, new_state = row_opt.update(grads, row_opt.unpack(cols, DIM), rows)
        rows, cols = rows + updates, row_opt.pack(new_state)
        dense_updates, dense_state = dense.update(grads, dense_state, params)
        params = optax.apply_updates(params, dense_updates)
        np.testing.assert_allclose(rows, params, **TOL, err_msg=f"step {step}")


def test_row_optimizer_state_init_matches_tablespec():
    assert row_adagrad(0.1, initial_accumulator_value=0.25).state_init == 0.25
    assert row_adam(0.1).state_init == 0.0
    with pytest.raises(InputError, match="initial_accumulator_value"):
        row_adagrad(0.1, initial_accumulator_value=-1.0)


# ----- helpers -------------------------------------------------------------------------------
def test_index_batch_round_trips():
    heads, tails = np.array([5, 3, 5, 9]), np.array([[3, 1], [7, 7]])
    keys, pos = index_batch({"e": (heads, tails), "r": np.array([2, 2, 0])})
    assert keys["e"].tolist() == [1, 3, 5, 7, 9] and keys["r"].tolist() == [0, 2]
    np.testing.assert_array_equal(keys["e"][pos["e"][0]], heads)
    np.testing.assert_array_equal(keys["e"][pos["e"][1]], tails)
    assert pos["e"][1].shape == (2, 2) and pos["e"][0].dtype == np.int32
    np.testing.assert_array_equal(keys["r"][pos["r"]], [2, 2, 0])


def test_bucket_sizes_are_few_and_cover():
    sizes = {bucket_size(n) for n in range(1, 5000)}
    assert sorted(sizes)[:4] == [64, 96, 128, 192] and len(sizes) == 14
    assert all(bucket_size(n) >= n for n in range(1, 5000))
    assert all(bucket_size(n) <= max(64, 1.5 * n) for n in range(1, 5000))


# ----- a tiny problem: two tables, a bilinear regression ---------------------------------
def tables():
    return {"a": TableSpec(40, DIM, seed=1, state_dim=DIM, state_init=0.1),
            "b": TableSpec(30, DIM, seed=2, init="uniform", state_dim=2 * DIM + 1)}


def technique_of(name: str):
    """The technique called ``name``; NuPS with a hot set (the first 5 keys of each table)."""
    return jaxps.Nups(hot_keys={"a": np.arange(5), "b": np.arange(5)}) if name == "nups" else name


def optimizers():
    return {"a": row_adagrad(0.2), "b": row_adam(0.05)}


def pair_loss(a_rows, b_rows, i, j, y):
    """Mean squared error of <a_i, b_j> against y, plus a small L2 term on the used rows."""
    pred = jnp.sum(a_rows[i] * b_rows[j], axis=-1)
    return jnp.mean((pred - y) ** 2) + 1e-3 * jnp.mean(a_rows[i] ** 2)


def loss_fn(rows, data):
    return pair_loss(rows["a"], rows["b"], data["i"], data["j"], data["y"])


def raw_batches(seed: int, n: int, size: int = 16, spread=(5, 40)):
    """Batches of global ids with varying numbers of distinct keys."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        hi = int(rng.integers(*spread))
        i = rng.integers(0, min(hi, 40), size)
        j = rng.integers(0, 30, size)
        out.append((i, j, np.sin(i + 0.5 * j).astype(np.float32)))
    return out


def ps_batches(raw):
    for i, j, y in raw:
        keys, pos = index_batch({"a": i, "b": j})
        yield keys, {"i": pos["a"], "j": pos["b"], "y": y}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_ps_training_equals_local_training(technique):
    raw = raw_batches(0, 12)
    with ParameterServer(tables(), technique=technique_of(technique)) as ps:
        init = {t: ps.pull(t, np.arange(spec.num_keys)) for t, spec in tables().items()}
        trainer = SparseTrainer(ps, loss_fn, optimizers(), min_bucket=8)
        for _ in range(2):
            trainer.train_epoch(ps_batches(raw))
        got = {t: ps.pull(t, np.arange(spec.num_keys)) for t, spec in tables().items()}

    # Plain local training: whole tables as jnp arrays, dense optax.adagrad on "a" (AdaGrad is
    # element-wise: untouched rows see zero gradient and do not change), and lazy Adam on "b"
    # written out with one optax.adam per touched row.
    a = jnp.asarray(init["a"][:, :DIM])
    b = jnp.asarray(init["b"][:, :DIM])
    adagrad = optax.adagrad(0.2, initial_accumulator_value=0.1)
    a_state = adagrad.init(a)
    adam = optax.adam(0.05)
    adam_update = jax.jit(adam.update)
    b_states = {}
    grad_fn = jax.jit(jax.grad(pair_loss, argnums=(0, 1)))
    for _ in range(2):
        for i, j, y in raw:
            ga, gb = grad_fn(a, b, i, j, y)
            updates, a_state = adagrad.update(ga, a_state, a)
            a = a + updates
            touched = np.unique(j)
            rows = []
            for k in touched:
                state = b_states.get(k) or adam.init(b[k])
                u, b_states[k] = adam_update(gb[k], state, b[k])
                rows.append(u)
            b = b.at[touched].add(jnp.stack(rows))
    np.testing.assert_allclose(got["a"][:, :DIM], a, **TOL)
    np.testing.assert_allclose(got["a"][:, DIM:], a_state[0].sum_of_squares, **TOL)
    np.testing.assert_allclose(got["b"][:, :DIM], b, **TOL)
    for k, state in b_states.items():
        np.testing.assert_allclose(got["b"][k, DIM], state[0].count)
        np.testing.assert_allclose(got["b"][k, DIM + 1:2 * DIM + 1], state[0].mu, **TOL)
    untouched = np.setdiff1d(np.arange(30), list(b_states))
    np.testing.assert_array_equal(got["b"][untouched], init["b"][untouched])


def _running_max_changes(raw) -> int:
    """Compiles of a grow-only padding: one per change of the running max bucket pair."""
    seen, floor = 0, (0, 0)
    for i, j, _ in raw:
        b = (bucket_size(len(np.unique(i)), min_size=4), bucket_size(len(np.unique(j)), min_size=4))
        new = (max(floor[0], b[0]), max(floor[1], b[1]))
        seen += new != floor
        floor = new
    return seen


def test_no_recompiles_after_warm_up():
    raw = raw_batches(1, 30, spread=(3, 40))
    counts = {len(np.unique(i)) for i, _, _ in raw}
    assert len(counts) > 5, counts  # unique counts really vary
    with ParameterServer(tables()) as ps:
        trainer = SparseTrainer(ps, loss_fn, optimizers(), min_bucket=4)
        first = trainer.train_epoch(ps_batches(raw))
        second = trainer.train_epoch(ps_batches(raw[::-1]))
    # Padded sizes only grow: a compile per new largest bucket, none once it settled.
    assert first.new_compiles == trainer.compiles == _running_max_changes(raw) < len(counts)
    assert second.new_compiles == 0 and second.compiles == first.compiles
    assert first.batches == second.batches == 30 and first.examples == 30 * 16


def test_max_keys_compile_once_up_front():
    raw = raw_batches(1, 30, spread=(3, 40))
    with ParameterServer(tables()) as ps:
        before = {t: ps.pull(t, np.arange(spec.num_keys)) for t, spec in ps.tables.items()}
        trainer = SparseTrainer(ps, loss_fn, optimizers(), min_bucket=4,
                                max_keys={"a": 40, "b": 40})
        assert trainer.compile(next(iter(ps_batches(raw)))) == 1
        # compile() ran the step on zero rows and pushed nothing.
        for t, rows in before.items():
            np.testing.assert_array_equal(ps.pull(t, np.arange(len(rows))), rows)
        epoch = trainer.train_epoch(ps_batches(raw))
        assert epoch.new_compiles == 0 and trainer.compiles == 1


def test_max_keys_too_small_says_which_table():
    raw = raw_batches(1, 3, spread=(30, 40))
    with ParameterServer(tables()) as ps:
        trainer = SparseTrainer(ps, loss_fn, optimizers(), min_bucket=4, max_keys={"a": 5})
        with pytest.raises(InputError, match="max_keys.*'a'"):
            trainer.train_epoch(ps_batches(raw))


def test_nan_step_pushes_nothing():
    raw = raw_batches(1, 2, spread=(3, 10))

    def nan_loss(rows, data):
        return loss_fn(rows, data) * jnp.nan

    with ParameterServer(tables()) as ps:
        before = ps.pull("a", np.arange(ps.tables["a"].num_keys))
        with pytest.raises(InputError, match="NaN or Inf.*nothing of this batch"):
            SparseTrainer(ps, nan_loss, optimizers()).train_epoch(ps_batches(raw))
        np.testing.assert_array_equal(ps.pull("a", np.arange(len(before))), before)


class _RecordingPs(ParameterServer):
    """Records (table, keys, start, clock at the call) of every intent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.intents = []

    def _intent_unsent(self, table, keys, start, end=None, checked=False):  # what the trainer calls
        self.intents.append((table, np.asarray(keys).copy(), start, self.clock))
        super()._intent_unsent(table, keys, start, end)


@pytest.mark.parametrize("lookahead", [1, 2])
def test_intents_are_signalled_lookahead_batches_ahead(lookahead):
    raw = raw_batches(2, 6)
    with _RecordingPs(tables(), technique="relocation") as ps:
        trainer = SparseTrainer(ps, loss_fn, optimizers(), lookahead=lookahead)
        trainer.train_epoch(ps_batches(raw))
        assert ps.clock == 6
    by_start = {}
    for table, keys, start, clock in ps.intents:
        by_start.setdefault(start, {})[table] = (keys, clock)
    assert sorted(by_start) == list(range(6))
    for t, (i, j, _) in enumerate(raw):
        (ka, clock_a), (kb, clock_b) = by_start[t]["a"], by_start[t]["b"]
        np.testing.assert_array_equal(ka, np.unique(i))
        np.testing.assert_array_equal(kb, np.unique(j))
        # Signalled while batch t - lookahead was about to run (clock t - lookahead), or at
        # the start for the first batches.
        assert clock_a == clock_b == max(0, t - lookahead), (t, clock_a)


def test_no_intents_with_lookahead_zero():
    with _RecordingPs(tables()) as ps:
        SparseTrainer(ps, loss_fn, optimizers(), lookahead=0).train_epoch(
            ps_batches(raw_batches(3, 3)))
        assert ps.intents == [] and ps.clock == 3


def test_batch_source_errors_reach_the_caller():
    def broken():
        yield from ps_batches(raw_batches(4, 2))
        raise RuntimeError("bad data line")

    with ParameterServer(tables()) as ps:
        trainer = SparseTrainer(ps, loss_fn, optimizers())
        with pytest.raises(RuntimeError, match="bad data line"):
            trainer.train_epoch(broken())
        with pytest.raises(InputError, match="no keys for table 'b'"):
            trainer.train_epoch([({"a": np.array([1])}, {})])


def test_state_dim_mismatch_says_how_to_fix():
    with ParameterServer({"a": TableSpec(10, DIM)}) as ps:
        with pytest.raises(InputError, match="state_dim=opt.state_dim"):
            SparseTrainer(ps, loss_fn, {"a": row_adagrad(0.1)})


# ----- 2 ranks ------------------------------------------------------------------------------
@pytest.mark.parametrize("technique", TECHNIQUES)
def test_two_ranks_train_and_loss_decreases(technique):
    """2 ranks train on their own batches through one PS; both losses fall."""
    from tests.conftest import mpirun

    res = mpirun(2, ["tests/test_trainer.py", "--mpi-child", technique], timeout=90)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert sorted(x["rank"] for x in lines) == [0, 1], out[-4000:]
    for line in lines:
        assert line["last"] < 0.5 * line["first"], line
        assert line["compiles"] <= 4, line


def _mpi_child(techniques=TECHNIQUES) -> None:
    """Each rank trains on its own batches; both share the tables through the PS.
    Rank 0 prints one JSON line per (technique, rank)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    raw = raw_batches(10 + comm.rank, 20)
    for technique in techniques:
        with ParameterServer(tables(), technique=technique_of(technique)) as ps:
            trainer = SparseTrainer(ps, loss_fn, optimizers())
            losses = [trainer.train_epoch(ps_batches(raw)).loss for _ in range(6)]
            ps.wait_sync()
        lines = comm.gather({"technique": technique, "rank": comm.rank, "first": losses[0],
                             "last": losses[-1], "compiles": trainer.compiles})
        for line in lines or []:
            print(json.dumps(line), flush=True)


if __name__ == "__main__" and "--mpi-child" in sys.argv:
    _mpi_child(sys.argv[sys.argv.index("--mpi-child") + 1:] or TECHNIQUES)
