"""The PS API in one process (a world of size 1): semantics, bad input, initial values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxps
from jaxps import InputError, ParameterServer, TableSpec

TECHNIQUES = list(jaxps.TECHNIQUES)


@pytest.fixture(params=TECHNIQUES)
def ps(request):
    tables = {"e": jaxps.TableSpec(50, 3, state_dim=2, state_init=0.5),
              "r": jaxps.TableSpec(7, 3, init="zeros")}
    technique = request.param
    if technique == "nups":
        technique = jaxps.Nups(hot_keys={"e": [0, 1, 2]})
    with jaxps.ParameterServer(tables, technique=technique) as server:
        yield server


def test_pull_returns_new_array_of_whole_rows(ps):
    rows = ps.pull("e", [3, 3, 9])
    assert rows.shape == (3, 5) and rows.dtype == np.float32
    assert np.array_equal(rows[0], rows[1])
    assert (rows[:, 3:] == 0.5).all()  # optimizer state follows the parameter
    rows[:] = 42  # the caller owns the result: the PS is unaffected
    assert not (ps.pull("e", [3]) == 42).any()


def test_push_is_additive_and_sums_duplicates(ps):
    before = ps.pull("e", [1, 2])
    ps.push("e", np.array([1, 2, 1], np.int32), np.ones((3, 5)))
    after = ps.pull("e", [1, 2])
    np.testing.assert_array_equal(after - before, [[2] * 5, [1] * 5])


def test_set_overwrites(ps):
    ps.set("r", [0, 6], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(ps.pull("r", [6, 0, 1]), [[3, 4, 5], [0, 1, 2], [0, 0, 0]])


def test_async_handles(ps):
    h = ps.push_async("r", [1], np.ones((1, 3)))
    ps.wait(h)
    h2 = ps.pull_async("r", [1, 1])
    assert h2.done()
    np.testing.assert_array_equal(ps.wait(h2), np.ones((2, 3)))
    assert ps.wait(h2) is not None  # waiting twice is fine


def test_empty_key_arrays_are_fine(ps):
    assert ps.pull("e", []).shape == (0, 5)
    ps.push("e", np.array([], np.int64), np.zeros((0, 5)))
    ps.localize("e", [])


def test_clock_and_intents(ps):
    assert ps.clock == 0
    ps.intent("e", np.arange(10), 1, 3)
    assert ps.advance_clock() == 1 and ps.clock == 1
    ps.intent("e", [4], 5)  # far ahead is accepted


def test_stats_counts_and_reset(ps):
    ps.pull("e", [1, 2, 3])
    ps.push("e", [1], np.zeros((1, 5)))
    s = ps.stats()
    for key in ("pull_local", "pull_remote", "push_local", "push_remote", "bytes_sent",
                "bytes_received", "messages_sent", "relocations", "replicas", "wait_seconds"):
        assert key in s
    assert s["pull_local"] == 3 and s["push_local"] == 1 and s["pull_remote"] == 0
    assert s["local_fraction"] == 1.0 and s["messages_sent"] == 0  # size 1: no traffic
    ps.reset_stats()
    assert ps.stats()["pull_local"] == 0


def test_world_of_size_one_has_no_service_thread(ps):
    assert ps.size == 1 and ps._engine.transport is None
    assert len(ps.owned_keys("e")) == 50


# ----- bad input: a clear error, and nothing applied -------------------------------------
BAD_CALLS = [
    ("unknown table", lambda ps: ps.pull("nope", [1]), "unknown table 'nope'"),
    ("key too large", lambda ps: ps.pull("e", [1, 50]), "key 50 at position 1 is out of range"),
    ("negative key", lambda ps: ps.push("e", [-1], np.ones((1, 5))), "key -1 at position 0"),
    ("float keys", lambda ps: ps.pull("e", np.array([1.0, 2.0])), "must be integers"),
    ("2-d keys", lambda ps: ps.pull("e", np.ones((2, 2), int)), "1-D integer array"),
    ("wrong width", lambda ps: ps.push("e", [1, 2], np.ones((2, 3))), "shape (len(keys), dim + state_dim)"),
    ("wrong count", lambda ps: ps.push("e", [1, 2], np.ones((3, 5))), "(2, 5)"),
    ("string deltas", lambda ps: ps.push("e", [1], np.array([["a"] * 5])), "floating point"),
    ("nan delta", lambda ps: ps.push("e", [1, 2], np.array([[0] * 5, [0, 0, np.nan, 0, 0]])),
     "key 2 (position 1) contains NaN"),
    ("inf set", lambda ps: ps.set("e", [4], np.full((1, 5), np.inf)), "NaN or Inf"),
    ("duplicate set", lambda ps: ps.set("e", [4, 4], np.ones((2, 5))), "duplicate key 4"),
    ("bad intent clocks", lambda ps: ps.intent("e", [1], 3, 2), "end must be an int > start"),
    ("negative intent", lambda ps: ps.intent("e", [1], -1), "intent start"),
]


@pytest.mark.parametrize("what,call,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_and_applies_nothing(ps, what, call, message):
    before = {name: ps.pull(name, np.arange(n)) for name, n in (("e", 50), ("r", 7))}
    with pytest.raises(jaxps.InputError) as err:
        call(ps)
    assert message in str(err.value)
    assert "'e'" in str(err.value) or what in ("unknown table", "bad intent clocks", "negative intent")
    for name, rows in before.items():
        np.testing.assert_array_equal(ps.pull(name, np.arange(len(rows))), rows)


def test_unknown_technique_lists_the_valid_ones():
    with pytest.raises(jaxps.InputError, match="choose one of"):
        jaxps.ParameterServer({"e": jaxps.TableSpec(3, 1)}, technique="magic")
    with pytest.raises(jaxps.InputError, match="needs its hot set"):
        jaxps.ParameterServer({"e": jaxps.TableSpec(3, 1)}, technique="nups")


def test_nups_hot_set_from_access_counts():
    counts = np.zeros(100, np.int64)
    counts[[5, 50, 99]] = [10, 30, 20]
    nups = jaxps.Nups(access_counts={"e": counts}, hot_fraction=0.02)
    with jaxps.ParameterServer({"e": jaxps.TableSpec(100, 1)}, technique=nups) as ps:
        assert np.array_equal(np.flatnonzero(ps._policy.fixed["e"]), [50, 99])
    with pytest.raises(jaxps.InputError, match="access_counts must have shape"):
        jaxps.ParameterServer({"e": jaxps.TableSpec(100, 1)},
                              technique=jaxps.Nups(access_counts={"e": counts[:5]}))


def test_bad_table_specs():
    with pytest.raises(jaxps.InputError, match="num_keys"):
        jaxps.TableSpec(0, 4)
    with pytest.raises(jaxps.InputError, match="init must be one of"):
        jaxps.TableSpec(10, 4, init="xavier")
    with pytest.raises(jaxps.InputError, match="TableSpec"):
        jaxps.ParameterServer({"e": (10, 4)})


def test_nan_allowed_when_check_disabled():
    with jaxps.ParameterServer({"e": jaxps.TableSpec(3, 1)}, check_finite=False) as ps:
        ps.push("e", [0], [[np.nan]])
        assert np.isnan(ps.pull("e", [0])[0, 0])


# ----- initial values ----------------------------------------------------------------------
def test_initial_values_are_deterministic_and_placement_independent():
    from jaxps._src.tables import initial_rows

    spec = jaxps.TableSpec(1000, 8, init="normal", init_scale=0.5, seed=3)
    all_rows = initial_rows(spec, "e", np.arange(1000))
    some = initial_rows(spec, "e", np.array([999, 0, 500]))
    np.testing.assert_array_equal(some, all_rows[[999, 0, 500]])
    assert abs(all_rows.std() - 0.5) < 0.02 and abs(all_rows.mean()) < 0.02
    other = initial_rows(spec, "r", np.arange(1000))
    assert not np.array_equal(other, all_rows)  # tables differ
    uni = initial_rows(jaxps.TableSpec(1000, 8, init="uniform", init_scale=0.1), "e", np.arange(1000))
    assert uni.min() >= -0.1 and uni.max() <= 0.1 and uni.std() > 0.05
    # init_mean shifts the same draws (torch's uniform_(a, b): scale (b-a)/2, mean (a+b)/2)
    shifted = initial_rows(jaxps.TableSpec(1000, 8, init="uniform", init_scale=0.1,
                                           init_mean=0.45), "e", np.arange(1000))
    np.testing.assert_allclose(shifted, uni + 0.45, atol=1e-7)
    normal = initial_rows(jaxps.TableSpec(1000, 8, init="normal", init_scale=0.5, seed=3,
                                          init_mean=-2.0), "e", np.arange(1000))
    np.testing.assert_allclose(normal, all_rows - 2.0, atol=1e-6)
    with pytest.raises(jaxps.InputError, match="init_mean must be a finite number"):
        jaxps.TableSpec(10, 4, init_mean=float("nan"))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 63), min_size=1, max_size=40),
       st.lists(st.integers(-3, 3), min_size=1, max_size=40))
def test_push_equals_numpy_reference(keys, values):
    """Property: a sequence of pushes with duplicates equals np.add.at on a dense copy."""
    n = min(len(keys), len(values))
    keys, vals = np.array(keys[:n]), np.array(values[:n], np.float32)[:, None]
    with jaxps.ParameterServer({"e": jaxps.TableSpec(64, 1, init="zeros")},
                               technique="relocation") as ps:
        ps.localize("e", keys[::2])
        ps.push("e", keys, vals)
        ref = np.zeros((64, 1), np.float32)
        np.add.at(ref, keys, vals)
        np.testing.assert_array_equal(ps.pull("e", np.arange(64)), ref)


def test_message_with_rows_for_the_first_keys_only():
    """SYNC carries rows only for its first keys (the written replicas): the wire format
    keeps that, and splitting the message (by mask or by index, as routing does) keeps
    each key with its own row, keys with rows first."""
    from jaxps._src import protocol
    from jaxps._src.message import Msg
    from jaxps._src.protocol import Tag

    keys = np.array([10, 11, 12, 13, 14])
    pos = keys * 100
    rows = np.array([[10.0, 10.0], [11.0, 11.0]], np.float32)  # keys 10 and 11
    buf = protocol.pack(0, 7, 1, keys, pos, rows)
    _, k, p, r = protocol.unpack(buf, 2)
    assert k.tolist() == keys.tolist() and p.tolist() == pos.tolist()
    assert r.tolist() == rows.tolist()
    _, _, _, empty = protocol.unpack(protocol.pack(0, 7, 1, keys, pos, rows[:0]), 2)
    assert empty.shape == (0, 2)

    m = Msg(Tag.SYNC, None, 7, 1, keys, pos, rows)
    for sel in (np.array([True, False, True, True, False]), np.array([3, 1, 4])):
        s = m.subset(sel)
        assert len(s.rows) == np.count_nonzero(s.keys < 12)
        assert (s.keys[:len(s.rows)] < 12).all() and (s.keys[len(s.rows):] >= 12).all()
        assert (s.rows[:, 0] == s.keys[:len(s.rows)]).all()
        assert (s.pos == s.keys * 100).all()


def test_envelope_round_trips_messages_of_different_tables():
    """An envelope holds messages of tables with different row widths, odd widths too
    (each message is padded to 8 bytes), and hands them back in order with their tags."""
    from jaxps._src import protocol
    from jaxps._src.protocol import H, Tag

    parts = [protocol.pack(0, 1, 0, np.array([3, 4]), np.array([0, 1]),
                           np.ones((2, 3), np.float32), tag=int(Tag.PUSH)),
             protocol.pack(1, 2, 0, np.array([9]), np.array([5]), tag=int(Tag.INTENT)),
             protocol.pack(1, 3, 0, np.array([7, 8]), np.array([2, 3]),
                           np.full((1, 5), 2.0, np.float32), tag=int(Tag.SYNC))]
    env = protocol.envelope(parts, 123)
    assert protocol.envelope_send_ns(env) == 123
    got = list(protocol.messages(env, [3, 5]))
    assert [h[H.TAG] for h, _ in got] == [Tag.PUSH, Tag.INTENT, Tag.SYNC]
    _, keys, _, rows = protocol.unpack(got[2][1], 5)
    assert keys.tolist() == [7, 8] and rows.tolist() == [[2.0] * 5]
    _, keys, pos, rows = protocol.unpack(got[0][1], 3)
    assert keys.tolist() == [3, 4] and rows.shape == (2, 3)
    assert list(protocol.messages(protocol.envelope([], 0), [3, 5])) == []


@pytest.mark.parametrize("value", ["-1", "abc", "nan"])
def test_bad_emulated_network_switch_says_which(monkeypatch, value):
    from jaxps._src.network import emulated_network as _emulated_network

    monkeypatch.setenv("JAXPS_NET_LATENCY_US", value)
    with pytest.raises(InputError, match="JAXPS_NET_LATENCY_US"):
        _emulated_network()


def test_adaptive_knobs_are_checked():
    with pytest.raises(InputError, match="drop_every must be an int >= 1"):
        jaxps.Adaptive(drop_every=0)
    with pytest.raises(InputError, match="grace"):
        jaxps.Adaptive(grace=-1)
    with pytest.raises(InputError, match="peer_timeout"):
        ParameterServer({"a": TableSpec(4, 2)}, peer_timeout=0)


@pytest.mark.parametrize("width", [1, 3, 256])
def test_row_store_add_matches_numpy_add(width):
    """RowStore.add gathers and scatters rows as opaque items: the same sums as numpy's
    ``values[slots] += deltas``, and only the given rows change."""
    from jaxps._src.store import RowStore
    rng = np.random.default_rng(width)
    store = RowStore(100, width, 100)
    store.values[:] = rng.random((100, width), dtype=np.float32)
    expected = store.values.copy()
    slots = rng.choice(100, 37, replace=False).astype(np.int32)
    deltas = rng.random((37, width), dtype=np.float32)
    store.add(slots, deltas)
    expected[slots] += deltas
    np.testing.assert_array_equal(store.values, expected)
    assert store.writes.sum() == 37


def test_replica_store_sync_arithmetic_and_growth():
    """ReplicaStore keeps value and base in two arrays: installs past its first capacity
    keep both, a sync round sends value - base of written replicas (then base = value),
    a refresh keeps local writes made meanwhile, a removal returns the unsynced delta."""
    from jaxps._src.store import ReplicaStore
    rng = np.random.default_rng(5)
    rep = ReplicaStore(1000, 3)
    keys = np.arange(0, 100, 2)  # 50 replicas: more than the initial capacity of 16
    fresh = rng.random((50, 3), dtype=np.float32)
    rep.install(keys, fresh, np.arange(50))
    slots = rep.slot[keys]
    np.testing.assert_array_equal(rep.value(slots), fresh)
    d = rng.random((10, 3), dtype=np.float32)
    rep.add(slots[:10], d)
    got_keys, stamps, deltas = rep.take_deltas()
    assert len(deltas) == 10 and set(got_keys[:10]) == set(keys[:10]) and len(got_keys) == 50
    order = np.argsort(got_keys[:10])
    np.testing.assert_allclose(deltas[order], d, rtol=1e-6)
    rep.add(slots[:1], np.ones((1, 3), np.float32))  # a write while the sync is in flight
    owner_rows = fresh[:10] + d + 5.0                  # the owner's rows, others' updates in
    rep.refresh(keys[:10], owner_rows, np.arange(10) + 100)
    expected = owner_rows.copy()
    expected[0] += 1.0
    np.testing.assert_allclose(rep.value(slots[:10]), expected, rtol=1e-6)
    np.testing.assert_allclose(rep.remove(keys[:1]), np.ones((1, 3)), rtol=1e-6)
    assert rep.count == 49 and rep.slot[keys[0]] < 0
