"""Replicas and adaptive management: convergence, staleness bound, drop on expiry,
local share under intents. Runs in one process and under mpiexec (tests/test_mpi.py)."""

import time

import numpy as np
import pytest

import jaxps
from tests.mpi_suite.conftest import COMM, assert_all, doc_technique, make_ps, rng_for

RANK, SIZE = COMM.rank, COMM.size
REPLICATING = ["replication", "nups", "adaptive", "custom"]


@pytest.mark.parametrize("technique", REPLICATING)
def test_replicas_converge_after_wait_sync(technique):
    """All ranks read identical rows after wait_sync, equal to the sum of all pushes."""
    K = 200
    rng = rng_for(11)
    with make_ps(technique, e=jaxps.TableSpec(K, 3, init="zeros")) as ps:
        pushed = np.zeros(K, np.int64)
        for clock in range(60):
            keys = np.unique(np.minimum(rng.zipf(1.3, 30) - 1, K - 1))
            ps.intent("e", keys, ps.clock + 1, ps.clock + 3)
            ps.push("e", keys, np.ones((len(keys), 3)))
            pushed[keys] += 1
            ps.advance_clock()
        ps.wait_sync()
        rows = ps.pull("e", np.arange(K))
        stats = ps.stats()
    everyone = COMM.allgather(rows)
    total = COMM.allreduce(pushed)
    assert_all(all(np.array_equal(r, everyone[0]) for r in everyone), "replicas differ")
    assert_all(np.array_equal(rows[:, 0], total.astype(np.float32)),
               f"rows differ from pushes at keys {np.flatnonzero(rows[:, 0] != total)[:8]}")
    if SIZE > 1:
        used = COMM.allreduce(stats["replicas"] + stats["replicas_created"])
        rounds = COMM.allreduce(stats["sync_rounds"])
        assert_all(used > 0 and rounds > 0, f"no replicas used: {stats}")


@pytest.mark.parametrize("bound", [1, 3])
def test_staleness_stays_within_bound(bound):
    """Under full replication with concurrent pushes, max_staleness <= staleness_bound,
    and a replica read never lags the true value by more than the bound allows."""
    K = 2_000
    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, 8, init="zeros")},
                               technique="replication", staleness_bound=bound) as ps:
        for _ in range(40):
            ps.push("e", np.arange(K), np.ones((K, 8)))
            ps.advance_clock()
        ps.barrier()
        stale = ps.stats()["max_staleness"]
        ps.wait_sync()
        final = ps.pull("e", [0])[0, 0]
    assert_all(stale <= bound, f"max_staleness {stale} > bound {bound}")
    assert_all(final == 40 * SIZE, f"final {final}, expected {40 * SIZE}")


def test_replica_dropped_on_intent_expiry_keeps_its_deltas():
    """Every rank intends the same keys for a while (so they get replicated), pushes, then
    stops: the replicas are dropped when the intents expire and no delta is lost."""
    K = 50
    hot = np.arange(10)
    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, 2, init="zeros")},
                               technique="adaptive") as ps:
        for clock in range(30):
            ps.intent("e", hot, ps.clock + 1, ps.clock + 2)
            time.sleep(0.005)
            ps.push("e", hot, np.ones((len(hot), 2)))
            ps.advance_clock()
        # Intents run out: replicas are dropped after the grace clocks, at the next
        # drop round.
        for _ in range(jaxps.Adaptive().grace + jaxps.Adaptive().drop_every + 1):
            ps.advance_clock()
        ps.barrier()
        stats = ps.stats()
        ps.wait_sync()
        rows = ps.pull("e", hot)
    assert_all(np.array_equal(rows[:, 0], np.full(10, 30.0 * SIZE)), f"rows {rows[:, 0]}")
    if SIZE > 1:
        dropped = COMM.allreduce(stats["replicas_dropped"])
        held = COMM.allreduce(stats["replicas"])
        assert_all(dropped > 0 and held == 0, f"dropped {dropped}, still held {held}")


def test_adaptive_serves_skewed_trace_locally():
    """Intents one clock ahead on a skewed trace (shared Zipf keys + a rank-private
    block): "adaptive" serves >= 99% of pulled keys locally (fixed seed). A key counts
    as local when the rank holds it (owned or replica) at the time of the pull."""
    K, clocks = 20_000, 120
    rng = rng_for(5)
    private = K // 2 + RANK * (K // 2 // SIZE) + np.arange(K // 2 // SIZE)
    trace = [np.unique(np.concatenate([np.minimum(rng.zipf(1.1, 100) - 1, K // 2 - 1),
                                       rng.choice(private, 100)])) for _ in range(clocks)]
    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, 16)}, technique="adaptive") as ps:
        ps.barrier()
        ps.intent("e", trace[0], 0)
        for t, keys in enumerate(trace):
            if t + 1 < clocks:
                ps.intent("e", trace[t + 1], ps.clock + 1)
            if t == 1:
                ps.reset_stats()  # the first batch had no time to move anything
            ps.pull("e", keys)
            # The "step": a GIL-free wait, longer when ranks outnumber this machine's 2
            # cores, so that each rank gets as much CPU per step as with 2 ranks.
            time.sleep(0.015 * max(2, SIZE))
            ps.push_async("e", keys, np.zeros((len(keys), 16)))
            ps.advance_clock()
        local = ps.stats()["local_fraction"]
        ps.barrier()
    assert_all(local >= 0.99, f"local fraction {local:.4f}")


def test_sync_rounds_ship_only_changed_rows():
    """Full replication of a 4,000 x 64 table: a sync round with nothing written anywhere
    sends keys and stamps only (16 bytes per replica, not the 256-byte rows); after a few
    pushes, only the written rows travel, and every replica still sees every push."""
    K, dim = 4_000, 64
    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, dim, init="zeros")},
                               technique="replication") as ps:
        ps.wait_sync()
        ps.reset_stats()
        for _ in range(3):  # idle rounds
            ps.advance_clock()
        ps.wait_sync()
        idle = ps.stats()
        written = np.arange(RANK, 40 * SIZE, SIZE)  # 40 keys per rank, disjoint
        ps.push("e", written, np.ones((40, dim)))
        ps.wait_sync()
        rows = ps.pull("e", np.arange(K))
        ps.barrier()
    replicas = K - len(range(RANK, K, SIZE))
    rounds = idle["sync_rounds"]
    full_rows = rounds * replicas * dim * 4  # what shipping every row would cost
    expect = np.zeros(K)
    expect[:40 * SIZE] = 1
    assert_all(np.array_equal(rows[:, 0], expect), "replicas missed a push")
    if SIZE > 1:
        assert_all(rounds >= 3, f"only {rounds} sync rounds")
        assert_all(idle["bytes_sent"] < 0.2 * full_rows,
                   f"idle rounds sent {idle['bytes_sent']} bytes; every row would be "
                   f"{full_rows}")


def test_intents_far_ahead_act_when_due():
    """adaptive: an intent for clocks far ahead moves nothing now, and does not count as
    the owner's use of a key (the key is handed over to a rank that needs it now, not
    replicated); once due, it brings the key back. Clocks tick every 5 ms, so the learned
    action horizon stays far below the 200 clocks ahead."""
    if SIZE < 2:
        pytest.skip("needs 2 ranks: run under mpiexec (tests/test_mpi.py does)")
    K = 1_000
    keys = np.arange(0, K, SIZE)  # home (and owner): rank 0
    far = 200
    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, 4)}, technique="adaptive") as ps:
        ps.barrier()
        if RANK == 0:
            ps.intent("e", keys, far, far + 5)
        for _ in range(20):  # rank 0 is "owner with a far intent"; nobody else asks yet
            time.sleep(0.005)
            ps.advance_clock()
        ps.barrier()
        early = ps.stats()
        if RANK == 1:  # needs the keys now: they are handed over, not replicated
            ps.intent("e", keys, ps.clock + 1, ps.clock + 3)
        for _ in range(10):
            time.sleep(0.005)
            ps.advance_clock()
        ps.barrier()
        moved = ps.stats()
        while ps.clock < far:  # rank 0's intent comes due: the keys come back
            time.sleep(0.002)
            ps.advance_clock()
        time.sleep(0.05)
        ps.advance_clock()
        ps.barrier()
        back = ps.stats()
        ps.barrier()
    assert_all(early["relocations"] == 0 and early["replicas_created"] == 0,
               f"acted on an intent {far} clocks ahead: {early}")
    expected = {0: ("relocations", back["relocations"], len(keys)),   # came back
                1: ("relocations", moved["relocations"], len(keys)),  # handed over
                }.get(RANK, ("relocations", moved["relocations"], 0))
    name, got, want = expected
    assert_all(got == want and moved["replicas_created"] == 0,
               f"{name} {got}, expected {want}; replicas created {moved['replicas_created']}")


@pytest.mark.skipif(COMM.size == 1, reason="one rank owns every key: nothing moves")
def test_doc_technique_moves_then_copies():
    """The example technique of docs/techniques.md does what it says: keys intended by
    several ranks first move (hand-overs), and once asked for often, are copied."""
    technique = doc_technique()(hot_after=2, drop_every=1000)
    K = 64
    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, 2, init="zeros")},
                               technique=technique) as ps:
        keys = np.arange(K)
        clocks = 20
        for clock in range(clocks):
            ps.intent("e", keys, ps.clock + 1)
            ps.wait_all()
            ps.push("e", keys, np.ones((K, 2), np.float32))
            ps.wait_all()  # no write in flight at the next intent (request's precondition)
            ps.advance_clock()
        ps.wait_sync()
        stats = ps.stats()
        rows = ps.pull("e", keys)
    # (pickle-based reductions only once the PS is closed: see ParameterServer)
    moved = COMM.allreduce(stats["relocations"])
    copied = COMM.allreduce(stats["replicas_created"])
    assert_all(moved > 0, f"no key moved ({moved})")
    assert_all(copied > 0, f"no replica was made ({copied})")
    assert_all(np.allclose(rows, clocks * COMM.size), f"lost updates: {rows[:3, 0]}")


def test_owner_copies_keys_it_will_use_soon_and_hands_over_the_rest():
    """adaptive: an owner that has signaled nothing yet (it started later) copies every key
    asked for; once it signals, it copies the keys it will use within SOON clocks and
    hands over the others. (Without this the rank that started first took over nearly
    every key both ranks use, and one rank synced all the replicas.)"""
    if SIZE < 2:
        pytest.skip("needs 2 ranks: run under mpiexec (tests/test_mpi.py does)")
    K = 1_200
    own0 = np.arange(0, K, SIZE)  # home (and owner): rank 0
    before, soon, other = own0[:100], own0[100:200], own0[200:300]

    def ask_and_tick(keys):
        if RANK == 1:
            ps.intent("e", keys, ps.clock + 1, ps.clock + 3)
        for _ in range(10):
            time.sleep(0.005)
            ps.advance_clock()
        ps.barrier()
        return ps.stats()

    with jaxps.ParameterServer({"e": jaxps.TableSpec(K, 4)}, technique="adaptive") as ps:
        ps.barrier()
        s0 = ps.stats()
        s1 = ask_and_tick(before)          # rank 0 has signaled nothing: copies
        if RANK == 0:
            ps.intent("e", soon, ps.clock + 5, ps.clock + 8)
        ps.barrier()
        s2 = ask_and_tick(soon)            # rank 0 will use them in 5 clocks: copies
        s3 = ask_and_tick(other)           # rank 0 has no use for these: hands them over
    if RANK == 1:
        got = [(s["replicas_created"] - a["replicas_created"], s["relocations"] - a["relocations"])
               for a, s in ((s0, s1), (s1, s2), (s2, s3))]
        want = [(len(before), 0), (len(soon), 0), (0, len(other))]
    else:
        got = want = None
    assert_all(got == want, f"(replicas, relocations) per phase {got}, expected {want}")
