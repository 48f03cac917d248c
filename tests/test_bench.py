"""Tests of the benchmark harness (``python -m train.bench``) on tiny graphs.

The local baseline is checked against the PS trainer (same loss, same rows after the same
batches on 1 rank); the harness's JSON, markdown and plot from real 1- and 2-rank jobs; a
failing or hanging job is recorded with its error, not dropped; the target ratios.
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
from mpi4py import MPI

import jaxps
from train.bench import harness as bench, workloads as bench_workloads
from jaxps import DenseTrainer, initial_table
from train.bench.workloads import BenchOptions
from train.kge import synthetic

FIELDS = {"workload", "technique", "ranks", "status", "examples_per_s", "local_fraction",
          "wait_fraction", "bytes_per_example", "messages_per_example", "relocations_per_step",
          "replicas_per_step", "compiles", "timed_compiles", "peak_rss_mb", "loss",
          "warmup_steps", "job_seconds"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A workload spec on a tiny generated graph (300 entities), small shapes."""
    folder = tmp_path_factory.mktemp("bench") / "graph"
    synthetic.write_dataset(folder, synthetic.generate(300, 8, 6000, seed=3))
    return f"kge:data={folder},dim=16,batch_size=64,negatives=32"


def build(spec: str):
    workload, params = bench_workloads.parse(spec)
    return workload.build(BenchOptions(params=params), MPI.COMM_WORLD)


def test_local_baseline_equals_ps_training_on_one_rank(tiny):
    problem = build(tiny)
    steps = 12
    local = DenseTrainer(problem.tables, problem.loss_fn, problem.optimizers)
    got = local.train(itertools.islice(problem.batches(0, 1), steps))
    with jaxps.ParameterServer(problem.tables, technique="adaptive") as ps:
        start = {t: ps.pull(t, np.arange(s.num_keys)) for t, s in problem.tables.items()}
        trainer = jaxps.SparseTrainer(ps, problem.loss_fn, problem.optimizers)
        losses = []
        trainer.train_epoch(itertools.islice(problem.batches(0, 1), steps),
                            on_batch=lambda n, loss: losses.append(loss))
        rows = {t: ps.pull(t, np.arange(s.num_keys)) for t, s in problem.tables.items()}
    for t, spec in problem.tables.items():
        np.testing.assert_array_equal(initial_table(spec, t), start[t])  # same start
        assert not np.allclose(rows[t], start[t])                        # it trained
        np.testing.assert_allclose(local.rows(t), rows[t], rtol=1e-5, atol=1e-6, err_msg=t)
    assert got.batches == steps and got.compiles >= 1
    np.testing.assert_allclose(got.losses, losses, rtol=1e-5)


def test_nups_hot_set_at_scale_one_is_the_kge_heuristic(tiny):
    from train.kge.config import KgeConfig
    from train.kge.data import load_dataset
    from train.kge.train import technique_for

    folder = tiny.split("data=")[1].split(",")[0]
    dataset = load_dataset(folder)
    nups = technique_for(KgeConfig(data=folder, technique="nups"), dataset)
    hot = build(tiny).hot_keys(1.0)
    for table in ("entity", "relation"):
        np.testing.assert_array_equal(hot[table], np.sort(nups._hot_keys[table]))
    assert len(build(tiny).hot_keys(4.0)["entity"]) == 4 * len(hot["entity"])


def test_tiny_matrix_writes_json_markdown_and_plot(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    bench.main(["--workloads", tiny, "--techniques", "local,classic", "--ranks", "2",
                "--steps", "4", "--warmup", "2", "--timeout", "120", "--out", str(out),
                "--repeats", "2"])
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert [(r["technique"], r["ranks"]) for r in runs] == [("local", 1), ("classic", 2)]
    for r in runs:
        assert r["status"] == "ok", r.get("error")
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["examples_per_s"] > 0 and r["steps_per_rank"] == 4
        assert len(r["peak_rss_mb"]) == r["ranks"] and np.isfinite(r["loss"])
        assert r["repeats"] == 2 and len(r["spread"]["examples_per_s"]["runs"]) == 2
        assert r["timed_compiles"] == 0  # compiled before the timed steps
        cpu = r["thread_cpu_seconds"]
        assert set(cpu) == set(bench.THREAD_KINDS) and cpu["main"] > 0
    local, classic = runs
    assert classic["thread_cpu_seconds"]["transport"] > 0 and \
        local["thread_cpu_seconds"]["transport"] == 0
    assert local["local_fraction"] == 1.0 and local["bytes_per_example"] == 0
    assert 0 < classic["local_fraction"] < 1 and classic["bytes_per_example"] > 0
    assert 0 <= classic["wait_fraction"] <= 1 and classic["examples"] == 2 * 4 * 64
    markdown = (out / "results.md").read_text()
    assert "| classic | 2 |" in markdown and "adaptive@1 / local" in markdown
    assert list(out.glob("*.png")), "no plot"
    assert "results.md" in capsys.readouterr().out


def test_steps_per_call_reaches_every_run(tiny, tmp_path):
    """--steps-per-call K: the local baseline and the PS jobs run K batches per call, with
    no compile in the timed steps, and the report says K."""
    out = tmp_path / "out"
    bench.main(["--workloads", tiny, "--techniques", "local,adaptive", "--ranks", "2",
                "--steps", "8", "--warmup", "4", "--timeout", "120", "--out", str(out),
                "--repeats", "1", "--steps-per-call", "4"])
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["technique"], r["ranks"]) for r in runs] == [("local", 1), ("adaptive", 2)]
    for r in runs:
        assert r["status"] == "ok", r.get("error")
        assert r["steps_per_call"] == 4 and r["steps_per_rank"] == 8
        assert r["timed_compiles"] == 0 and np.isfinite(r["loss"])
    assert "--steps-per-call 4" in (out / "results.md").read_text()
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps-per-call", "0"])


def test_failing_and_hanging_jobs_are_recorded(tiny, tmp_path):
    args = bench.parse_args(["--workloads", tiny, "--timeout", "60"])
    run = {"workload": tiny + ",dim=0", "technique": "classic", "ranks": 1, "steps": 2,
           "warmup": 0, "seed": 0, "data_root": "", "lookahead": 1}
    failed = bench.launch(run, args, tmp_path)
    assert failed["status"] == "failed" and "dim must be >= 1" in failed["error"]
    assert "ValueError" in bench.headline(failed["error"])
    args.timeout = 1.0
    hung = bench.launch(run | {"workload": tiny, "steps": 10 ** 6}, args, tmp_path)
    assert hung["status"] == "timeout" and hung["job_seconds"] < 30
    md = bench.markdown([failed, hung], {"mode": "test", "command": "x", "steps": 2,
                                         "warmup": 0, "cpus": 2, "started": "now",
                                         "wall_seconds": 1.0, "ratios": bench.ratios([])})
    assert "failed: ValueError" in md and "| timeout: " in md


def fake(technique, ranks, speed, **extra):
    return {"workload": "w", "technique": technique, "ranks": ranks, "status": "ok",
            "examples_per_s": speed, **extra}


def test_target_ratios():
    runs = [fake("local", 1, 100.0), fake("adaptive", 1, 95.0), fake("classic", 1, 99.0),
            fake("adaptive", 2, 160.0), fake("classic", 4, 100.0), fake("adaptive", 4, 190.0),
            fake("nups", 4, 150.0, nups_scale=0.5), fake("nups", 4, 200.0, nups_scale=2.0),
            fake("relocation", 4, 0.0) | {"status": "failed"}]
    got = {(q["ratio"], q["ranks"]): q for q in bench.ratios(runs)}
    assert got["adaptive@1 / local", 1]["value"] == pytest.approx(0.95)
    assert got["adaptive@1 / local", 1]["met"]
    assert got["adaptive@4 / classic@4", 4]["value"] == pytest.approx(1.9)
    assert got["adaptive@4 / classic@4", 4]["met"]
    best4 = got["adaptive / best other", 4]
    assert best4["versus"] == "nups x2" and best4["value"] == pytest.approx(0.95)
    assert got["adaptive / best other", 1]["versus"] == "classic"
    assert got["adaptive@2 / adaptive@1", 2]["value"] == pytest.approx(160 / 95)
    assert not got["adaptive@2 / adaptive@1", 2]["met"]  # 1.68 < 1.7
    assert ("adaptive@2 / classic@2", 2) not in got  # only with an emulated network
    assert got["adaptive / best other", 2]["value"] is None  # nothing else ran on 2 ranks


def test_repeats_report_the_median_and_spread():
    runs = [{"examples_per_s": v, "examples_per_cpu_s": v / 2, "tag": i}
            for i, v in enumerate([100.0, 90.0, 110.0])]
    got = bench.summarize_repeats(runs)
    assert got["tag"] == 0 and got["examples_per_s"] == 100.0
    assert got["spread"]["examples_per_s"] == {"min": 90.0, "median": 100.0, "max": 110.0,
                                              "runs": [100.0, 90.0, 110.0]}
    assert got["relative_spread"] == pytest.approx(0.2)


def test_thread_cpu_by_kind():
    before = {1: ("python", 1.0), 2: ("python", 0.5), 3: ("tf_XLAEigen", 2.0)}
    after = {1: ("python", 3.0), 2: ("python", 1.5), 3: ("tf_XLAEigen", 5.0)}
    got = bench.thread_cpu_by_kind(before, after, 7.0, main=1, transport=2)
    assert got == {"main": 2.0, "transport": 1.0, "xla": 3.0, "producer": 1.0}


def test_plan_sweeps_nups_only_on_several_ranks():
    args = bench.parse_args(["--quick"])
    runs = bench.plan(args)
    assert runs[0]["technique"] == "local" and runs[0]["ranks"] == 1
    nups = [(r["ranks"], r["nups_scale"]) for r in runs if r["technique"] == "nups"]
    assert nups == [(1, 1.0)] + [(4, s) for s in bench.QUICK_NUPS_SCALES]
    assert {r["ranks"] for r in runs} == {1, 4}
    with pytest.raises(SystemExit):
        bench.parse_args(["--workloads", "no-such-workload"])


def test_workload_parameters():
    workload, params = bench_workloads.parse("kge-zipf:dim=32,lr=0.5")
    assert workload.name == "kge-zipf" and params == (("dim", "32"), ("lr", "0.5"))
    with pytest.raises(ValueError, match="key=value"):
        bench_workloads.parse("kge-zipf:dim")
    options = BenchOptions(params=(("no_such", "1"),))
    with pytest.raises(ValueError, match="unknown KGE workload parameter"):
        bench_workloads._kge_config({}, options)
    assert bench_workloads.WORKLOADS["fb15k-237"].unavailable(BenchOptions()) is not None


def test_floor_moves_rows_without_losing_any(tmp_path):
    """`python -m train.bench.floor` on 2 real ranks: every phase timed, every key still
    on exactly one rank after the moves, the JSON written."""
    from tests.conftest import mpirun

    out = tmp_path / "floor.json"
    res = mpirun(2, ["-m", "train.bench.floor", "--no-launch", "--steps", "20",
                     "--repeats", "2", "--moved", "40", "--keys", "1000",
                     "--json", str(out)], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["keys_conserved"] is True
    assert set(figures["us_per_step"]) == {"request", "serve", "insert", "sendrecv",
                                           "process"}
    assert figures["move_us_per_row"] > 0
    assert "every key on exactly one rank afterwards: True" in res.stdout


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_lockstep_trains_what_a_serial_replay_trains(tiny, ranks):
    """train.bench.lockstep on real ranks: every rank's deltas reach the owners (none lost,
    none doubled), pulls see the state after the previous step's pushes."""
    from tests.conftest import mpirun

    res = mpirun(ranks, ["tests/mpi_programs/lockstep_check.py", tiny, "15"], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["max_abs_change"] > 1e-3          # it trained
    assert out["max_abs_diff"] < 1e-5, out       # exactly what the replay trained


def test_calls_times_every_piece_of_a_call(tiny, tmp_path):
    """`python -m train.bench.calls`: the no-PS call and each piece of the PS call timed
    over the same batches, the JSON written with positive figures."""
    from train.bench import calls

    out = tmp_path / "calls.json"
    assert calls.main(["--workload", tiny, "--steps-per-call", "4", "--calls", "3",
                       "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["ms_per_batch"]) == {"local", "window", "pull", "step", "push", "tick"}
    assert all(v["min_ms"] > 0 for v in figures["ms_per_batch"].values())
    assert 0 < figures["union_rows"]["entity"] <= 300 and figures["local_over_ps"] > 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
