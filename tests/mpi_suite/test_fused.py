"""No lost update with several batches per call (``steps_per_call``), every technique.

Each rank trains its own batches (7 + rank of them, so shards are uneven) with plain SGD
on a loss whose gradient is -1 in column ``rank`` of every key use: whatever the
staleness of what a call reads, the rows must end up counting every use of every rank
exactly (a lost or doubled delta shows as a wrong count).
"""

import jax.numpy as jnp
import numpy as np
import optax

import jaxps
from tests.mpi_suite.conftest import COMM, assert_all, make_ps, rng_for

RANK, SIZE = COMM.rank, COMM.size
NUM_KEYS = 200


def _loss(rows, data):
    return -jnp.sum(rows["e"][data["pos"]] @ data["col"])


def test_every_use_is_counted_with_k_batches_per_call(technique, steps_per_call=3):
    # K = 3 against 7 + rank batches: every rank ends on a short window (1 or 2 batches).
    sgd = jaxps.row_optimizer(optax.sgd(1.0), name="sgd")
    rng = rng_for(steps_per_call)
    col = np.zeros(SIZE, np.float32)
    col[RANK] = 1.0
    counts, batches = np.zeros(NUM_KEYS, np.int64), []
    for _ in range(7 + RANK):
        # Zipf-skewed keys spread over the key range: ranks share the hot ones.
        ids = (np.minimum(rng.zipf(1.3, 40) - 1, NUM_KEYS - 1) * 37) % NUM_KEYS
        np.add.at(counts, ids, 1)
        keys, pos = jaxps.index_batch({"e": ids})
        batches.append((keys, {"pos": pos["e"], "col": col}))
    spec = jaxps.TableSpec(NUM_KEYS, SIZE, init="zeros", state_dim=0)
    with make_ps(technique, e=spec) as ps:
        trainer = jaxps.SparseTrainer(ps, _loss, {"e": sgd}, steps_per_call=steps_per_call,
                                      lookahead=2)
        epochs = [trainer.train_epoch(batches) for _ in range(2)]
        ps.wait_sync()
        got = ps.pull("e", np.arange(NUM_KEYS))
    want = np.stack(COMM.allgather(2 * counts), axis=1)
    wrong = np.argwhere(got != want)
    assert_all(len(wrong) == 0, f"{len(wrong)} wrong counts, first (key, rank) "
                                f"{wrong[:3].tolist()}: got {got[tuple(wrong[:3].T)].tolist()} "
                                f"want {want[tuple(wrong[:3].T)].tolist()}")
    assert_all(all(m.batches == 7 + RANK for m in epochs), "batch counts")
