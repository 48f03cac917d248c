"""Correctness of the PS under concurrency, for every technique and any world size."""

import time

import numpy as np
import pytest

import jaxps
from tests.mpi_suite.conftest import COMM, assert_all, make_ps, rng_for

RANK, SIZE = COMM.rank, COMM.size


def _zipf_keys(rng, n, num_keys):
    """Zipf-skewed keys; the hot keys are spread over the key range (and so over homes)."""
    ranks = np.minimum(rng.zipf(1.2, n) - 1, num_keys - 1)
    return (ranks * 7919) % num_keys


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_lost_update_random_interleaving(technique, seed):
    """Random mix of async pull/push/set/localize/intent; every push is counted exactly.

    Column r of a row is written only by rank r, so each pull also checks that a rank
    reads exactly its own writes (read-your-writes), while other ranks' columns must
    never exceed their final value.
    """
    K = 300
    rng = rng_for(seed)
    with make_ps(technique, e=jaxps.TableSpec(K, SIZE + 1, init="zeros")) as ps:
        mine = np.zeros(K, np.int64)
        handles, failures = [], []
        for it in range(400):
            op = rng.integers(6)
            keys = _zipf_keys(rng, int(rng.integers(1, 40)), K)
            if op <= 1:  # push with duplicates: summed
                deltas = np.zeros((len(keys), SIZE + 1), np.float32)
                deltas[:, RANK] = 1
                handles.append(ps.push_async("e", keys, deltas))
                np.add.at(mine, keys, 1)
            elif op == 2:
                rows = ps.pull("e", keys)
                if not (rows[:, RANK] == mine[keys]).all():
                    failures.append(f"iter {it}: read {rows[:, RANK]} expected {mine[keys]}")
            elif op == 3:
                handles.append(ps.pull_async("e", keys))
            elif op == 4:
                handles.append(ps.localize_async("e", rng.integers(0, K, 15)))
            else:
                ps.intent("e", keys, ps.clock + int(rng.integers(0, 3)))
                ps.advance_clock()
        for h in handles:
            ps.wait(h)
        # Then a read-modify-write set of a column nobody pushes to, on keys partitioned
        # over ranks; wait_sync keeps it from overwriting other ranks' in-flight pushes
        # (and makes replicas current).
        ps.wait_sync()
        owned = np.arange(RANK, K, SIZE)
        cur = ps.pull("e", owned)
        cur[:, SIZE] = owned
        ps.set("e", owned, cur)
        ps.wait_sync()
        final = ps.pull("e", np.arange(K))
        pushed = np.array(COMM.allgather(mine))  # [size, K]
    assert_all(not failures, "; ".join(failures[:3]))
    assert_all(np.array_equal(final[:, :SIZE], pushed.T.astype(np.float32)),
               f"lost update: {np.flatnonzero((final[:, :SIZE] != pushed.T).any(1))[:10]}")
    assert_all(np.array_equal(final[:, SIZE], np.arange(K, dtype=np.float32)), "lost set")


def test_read_your_writes_with_moving_keys(technique):
    """Push then immediately pull the same keys while other ranks relocate them."""
    K = 64
    rng = rng_for(7)
    with make_ps(technique, e=jaxps.TableSpec(K, SIZE, init="zeros")) as ps:
        mine = np.zeros(K, np.int64)
        bad = []
        for it in range(200):
            keys = rng.choice(K, 8, replace=False)
            ps.localize_async("e", rng.choice(K, 8, replace=False))
            d = np.zeros((8, SIZE), np.float32)
            d[:, RANK] = 1
            ps.push_async("e", keys, d)
            mine[keys] += 1
            got = ps.pull("e", keys)[:, RANK]
            if not (got == mine[keys]).all():
                bad.append(it)
        ps.barrier()
    assert_all(not bad, f"stale reads of own writes at iterations {bad[:5]}")


def test_chained_relocation_with_requests_in_flight(technique):
    """Key ring: every rank in turn localizes the same keys while all ranks push to them."""
    K = 16
    keys = np.arange(K)
    with make_ps(technique, e=jaxps.TableSpec(K, 1, init="zeros")) as ps:
        for rnd in range(6):
            for turn in range(SIZE):
                hs = [ps.push_async("e", keys, np.ones((K, 1)))]
                if turn == RANK:
                    hs.append(ps.localize_async("e", keys))
                hs.append(ps.pull_async("e", keys))
                for h in hs:
                    ps.wait(h)
            ps.wait_sync()
        final = ps.pull("e", keys)[:, 0]
        where = ps.owned_keys("e")
        ps.barrier()
    assert_all(np.array_equal(final, np.full(K, 6.0 * SIZE * SIZE)), f"final {final}")
    owned_total = COMM.allreduce(len(where))  # replicas are not owned: one owner per key
    assert_all(owned_total == K, f"{owned_total} owned copies of {K} keys exist")


def test_pull_racing_relocation(technique):
    """Pulls of keys whose owner changes under them always see complete, correct rows."""
    K = 32
    with make_ps(technique, e=jaxps.TableSpec(K, 4, init="zeros")) as ps:
        if RANK == 0:
            ps.set("e", np.arange(K), np.tile(np.arange(K, dtype=np.float32)[:, None], 4))
        ps.wait_sync()
        rng = rng_for(3)
        bad = 0
        for _ in range(100):
            hs = [ps.localize_async("e", rng.choice(K, 4, replace=False))]
            keys = rng.choice(K, 10)
            rows = ps.pull("e", keys)
            bad += int((rows != keys[:, None]).any())
            ps.wait(hs[0])
        ps.barrier()
    assert_all(bad == 0, f"{bad} pulls returned wrong rows")


def test_mutual_large_pulls_do_not_deadlock(technique):
    """Deadlock regression: every rank blocks on a big remote pull from every other rank
    at the same time; the transport threads must serve each other."""
    K = 40_000
    with make_ps(technique, e=jaxps.TableSpec(K, 32)) as ps:
        for _ in range(3):
            keys = np.arange(K)[np.arange(K) % SIZE != RANK] if SIZE > 1 else np.arange(K)
            rows = ps.pull("e", keys)
            assert rows.shape == (len(keys), 32)
        ps.barrier()


def test_bad_input_on_one_rank_changes_nothing(technique):
    """An InputError on rank 0 leaves the table untouched and the other ranks unaffected."""
    K = 20
    with make_ps(technique, e=jaxps.TableSpec(K, 2, init="zeros")) as ps:
        errors = []
        if RANK == 0:
            bad = np.ones((3, 2), np.float32)
            bad[2, 1] = np.nan
            for call in (lambda: ps.push("e", [0, 1, 2], bad),
                         lambda: ps.push("e", [0, 1, K], np.ones((3, 2))),
                         lambda: ps.set("e", [0, 0], np.ones((2, 2)))):
                try:
                    call()
                    errors.append("no error")
                except jaxps.InputError:
                    pass
        ps.wait_sync()
        rows = ps.pull("e", np.arange(K))
        ps.barrier()
    assert_all(not errors and not rows.any(), f"errors {errors}, nonzero rows {rows.any()}")


def test_remote_pull_served_while_owner_sleeps():
    """A rank blocked in a GIL-releasing call still answers remote pulls promptly.
    (Classic placement, where the rows surely are remote; the service is the same for all.)"""
    technique = "classic"
    if SIZE < 2:
        pytest.skip("needs 2 ranks: run under mpiexec (tests/test_mpi.py does)")
    K = 10_000 * SIZE
    with make_ps(technique, e=jaxps.TableSpec(K, 32)) as ps:
        ps.barrier()
        elapsed = 0.0
        if RANK == 0:
            time.sleep(3.0)
        elif RANK == 1:
            keys = np.arange(0, K, SIZE)  # 10,000 keys, home rank 0
            time.sleep(0.2)  # make sure rank 0 is asleep
            t0 = time.perf_counter()
            rows = ps.pull("e", keys)
            elapsed = time.perf_counter() - t0
            assert rows.shape == (10_000, 32)
        ps.barrier()
    assert_all(elapsed < 0.5, f"remote pull of 10,000 rows took {elapsed:.3f}s")
    if RANK == 1:
        print(f"\nremote pull of 10,000 x 32 rows from a sleeping rank: {elapsed * 1e3:.1f} ms")


@pytest.mark.parametrize("technique", ["relocation", "adaptive"])
def test_next_server_gets_no_message_of_the_last(technique):
    """Regression: OWNER updates are never acknowledged, so some were still in flight when
    a ParameterServer closed; MPICH reused the freed communicator's context id for the
    next one, which then took a stale update (a home believed a rank owned a key it
    asked for, a ProtocolError). ``close`` now drains: each new server starts clean."""
    K = 32
    for rep in range(4):
        with make_ps(technique, e=jaxps.TableSpec(K, 4)) as ps:
            rng = rng_for(40 + rep)
            for _ in range(40):  # every rank moves random keys: hand-overs everywhere
                ps.localize("e", rng.choice(K, 4, replace=False))
        with make_ps(technique, e=jaxps.TableSpec(K, 4)) as ps:
            ps.barrier()
            time.sleep(0.05)  # a stale message would have arrived by now
            t = ps._engine.tables[0]
            with ps._engine.lock:
                versions = t.owner_version.copy()
                owners = t.owner.copy()
            ps.barrier()
        assert_all(not versions.any() and (owners == RANK).all(),
                   f"rep {rep}: new server's home directory changed: versions {versions}")


def test_host_placement_numbers_the_ranks_of_a_host():
    """Every rank of a one-host job gets its own local rank (its GPU, where there are
    GPUs: local_rank % count)."""
    with make_ps("classic", e=jaxps.TableSpec(8, 2)) as ps:
        local = COMM.allgather(tuple(ps.host))
    assert sorted(r for r, _, _ in local) == list(range(SIZE))
    assert {n for _, n, _ in local} == {SIZE}
