"""Access traces (train.trace) and the what-if estimator (train.whatif)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from train.trace import Trace, TraceRecorder, load_trace, synthetic_trace
from train.whatif import KEY_BYTES, TECHNIQUES, Network, compare, main, replay

from tests.conftest import REPO, mpi_env

ROW = 512


def small_skewed(num_ranks=4, clocks=24, seed=0):
    return synthetic_trace(num_ranks, clocks, 4000, 64, 1.1, 0.5, seed, row_bytes=ROW)


def test_recorder_round_trip(tmp_path):
    tables = {"entity": (1000, 256), "relation": (10, 128)}
    rng = np.random.default_rng(0)
    expect = []
    for rank in range(3):
        clocks = []
        with TraceRecorder(tmp_path / "run", rank, tables=tables) as rec:
            for t in range(5):
                d = {}
                if t != 2:      # a clock without accesses stays an empty dict
                    a, b = rng.integers(0, 1000, 7), rng.integers(0, 1000, 3)
                    rec.record(t, "entity", a)
                    rec.record(t, "entity", b)      # same (clock, table) twice: concatenated
                    d["entity"] = np.concatenate([a, b])
                if t % 2:
                    d["relation"] = rng.integers(0, 10, 4)
                    rec.record(t, "relation", d["relation"].astype(np.int32))
                clocks.append(d)
        expect.append(clocks)
    trace = load_trace(tmp_path / "run")
    assert trace.tables == tables and trace.num_ranks == 3 and trace.num_clocks == 5
    for rank in range(3):
        for t in range(5):
            got, want = trace.ranks[rank][t], expect[rank][t]
            assert sorted(got) == sorted(want)
            for name in want:
                assert got[name].dtype == np.int64
                np.testing.assert_array_equal(got[name], want[name])


def test_recorder_rejects_bad_input(tmp_path):
    rec = TraceRecorder(tmp_path / "x", 0, tables={"e": (10, 8)})
    with pytest.raises(ValueError, match="outside"):
        rec.record(0, "e", np.array([3, 10]))
    with pytest.raises(ValueError, match="unknown table"):
        rec.record(0, "f", np.array([1]))
    with pytest.raises(ValueError, match="integers"):
        rec.record(0, "e", np.array([1.5]))
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "nothing")


def test_synthetic_shape_and_skew():
    n, clocks, keys, batch = 4, 50, 10_000, 100
    trace = synthetic_trace(n, clocks, keys, batch, 1.1, 0.25, 3)
    assert trace.num_ranks == n and trace.num_clocks == clocks
    assert trace.tables == {"emb": (keys, 512)}
    block = keys // 2 // n
    shared = []
    for r in range(n):
        for d in trace.ranks[r]:
            k = d["emb"]
            assert k.shape == (batch,) and k.dtype == np.int64
            priv = k[k >= keys // 2]
            assert len(priv) == 25
            assert np.all((priv >= keys // 2 + r * block) & (priv < keys // 2 + (r + 1) * block))
            shared.append(k[k < keys // 2])
    counts = np.bincount(np.concatenate(shared), minlength=keys // 2)
    top = np.sort(counts)[::-1]
    assert counts.argmax() == 0
    assert top[: keys // 200].sum() > 0.4 * counts.sum()     # top 1% of shared keys: > 40%


def uniform_trace(n, clocks, num_keys, batch, seed=0):
    rng = np.random.default_rng(seed)
    ranks = [[{"emb": rng.integers(0, num_keys, batch)} for _ in range(clocks)] for _ in range(n)]
    return Trace(tables={"emb": (num_keys, ROW)}, ranks=ranks)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_classic_remote_share_is_uniform(n):
    e = replay(uniform_trace(n, 20, 100_000, 200), "classic", ranks=n)
    assert abs((1 - e.local_fraction) - (n - 1) / n) < 0.02


def test_one_rank_is_all_local_and_silent():
    for e in compare(small_skewed(), ranks=[1]):
        assert e.local_fraction == 1.0 and e.bytes_per_clock == 0 and e.comm_s == 0
        assert e.clocks == 4 * 24
        assert e.time_s == pytest.approx(e.clocks * 0.010)


def test_redistribution_changes_clock_count():
    trace = small_skewed(num_ranks=4, clocks=24)
    assert replay(trace, "classic", ranks=8).clocks == 12
    assert replay(trace, "classic", ranks=3).clocks == 32


def test_private_blocks_become_local():
    n, clocks, batch, block = 4, 60, 32, 100
    trace = synthetic_trace(n, clocks, 2 * n * block, batch, 1.1, 1.0, 1, row_bytes=ROW)
    classic = replay(trace, "classic", ranks=n)
    late = slice(clocks - 20, clocks)
    for tech in ("adaptive", "relocation"):
        e = replay(trace, tech, ranks=n)
        pc = e.per_clock
        assert pc["local"][late].sum() / pc["total"][late].sum() > 0.999
        assert pc["bytes"][late].mean() < 0.01 * classic.bytes_per_clock
    # classic: every access to a key homed elsewhere is a pull (16, row + 16) and a push
    # (row + 16, ack 16)
    uniq = classic.per_clock["total"].sum() / clocks
    payload = (n - 1) / n * uniq * (2 * ROW + 4 * KEY_BYTES)
    assert classic.bytes_per_clock == pytest.approx(payload, rel=0.1)
    assert abs((1 - classic.local_fraction) - (n - 1) / n) < 0.03


def test_full_replication_bytes_grow_with_ranks():
    est = compare(small_skewed(num_ranks=8, clocks=16), ranks=[2, 4, 8], techniques=["replication"])
    b = [e.bytes_per_clock for e in est]
    assert b[0] < b[1] < b[2]
    assert all(e.local_fraction == 1.0 for e in est)


@pytest.mark.parametrize("n", [4, 8])
def test_adaptive_sends_less_than_classic_on_skewed_trace(n):
    trace = small_skewed(num_ranks=n, clocks=32, seed=n)
    by = {e.technique: e for e in compare(trace, ranks=[n], techniques=["classic", "adaptive"])}
    assert by["adaptive"].bytes_per_clock <= by["classic"].bytes_per_clock
    assert by["adaptive"].local_fraction > 0.9 > by["classic"].local_fraction


TINY = small_skewed(num_ranks=4, clocks=8)


@settings(max_examples=25, deadline=None)
@given(tech=st.sampled_from(TECHNIQUES), ranks=st.sampled_from([2, 4, 16]),
       bw=st.floats(1e6, 1e11), factor=st.floats(1.0, 100.0),
       latency=st.floats(0, 1e-3), compute=st.floats(0, 20))
def test_more_bandwidth_never_slower(tech, ranks, bw, factor, latency, compute):
    slow = replay(TINY, tech, ranks=ranks, network=Network(bw, latency, compute))
    fast = replay(TINY, tech, ranks=ranks, network=Network(bw * factor, latency, compute))
    assert fast.time_s <= slow.time_s * (1 + 1e-12)
    assert fast.comm_s <= slow.comm_s * (1 + 1e-12)
    assert slow.time_s >= slow.clocks * compute / 1e3 * (1 - 1e-12)


def test_replay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown technique"):
        replay(TINY, "lapse", ranks=2)
    with pytest.raises(ValueError, match="1..64"):
        replay(TINY, "classic", ranks=65)


def test_cli_synthetic_writes_json(tmp_path, capsys):
    out = tmp_path / "w.json"
    main(["--synthetic", "--syn-ranks", "4", "--syn-clocks", "8", "--syn-keys", "2000",
          "--syn-batch", "32", "--ranks", "2,4", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| 4 | adaptive |" in text
    data = json.loads(out.read_text())
    assert len(data["estimates"]) == 2 * len(TECHNIQUES)
    assert {"technique", "ranks", "local_fraction", "bytes_per_clock", "comm_s", "time_s"} \
        <= set(data["estimates"][0])


def test_cli_module_on_recorded_trace(tmp_path):
    trace = small_skewed(num_ranks=2, clocks=6)
    for r in range(2):
        with TraceRecorder(tmp_path / "rec", r, tables=trace.tables) as rec:
            for t, d in enumerate(trace.ranks[r]):
                rec.record(t, "emb", d["emb"])
    out = tmp_path / "o.json"
    p = subprocess.run([sys.executable, "-m", "train.whatif", str(tmp_path / "rec"), "--ranks", "2",
                        "--techniques", "classic,adaptive", "--json", str(out)],
                       cwd=REPO, env=mpi_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [e["technique"] for e in json.loads(out.read_text())["estimates"]] == ["classic", "adaptive"]


def test_sync_held_ships_every_replica_each_clock():
    n, trace = 4, small_skewed(num_ranks=4, clocks=8)
    num_keys = trace.tables["emb"][0]
    held = replay(trace, "replication", ranks=n, sync="held")
    # each rank sends deltas of the keys other ranks home and answers every other rank's deltas
    whole = n * 64 + (ROW + KEY_BYTES) * num_keys
    assert held.bytes_per_clock == pytest.approx(2 * (n - 1) * whole)
    touched = replay(trace, "replication", ranks=n)
    assert touched.bytes_per_clock < held.bytes_per_clock
    assert (replay(trace, "nups", ranks=n, sync="held").bytes_per_clock
            >= replay(trace, "nups", ranks=n).bytes_per_clock)
