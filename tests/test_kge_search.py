"""python -m train.kge.search (train/kge/search.py): trial draws, and a 2-trial grid run with
its run folders, summary table and best.yaml."""

from __future__ import annotations

import json

import pytest
import yaml

import jaxps
from train.kge import synthetic
from train.kge.config import parse_args
from train.kge.search import draw, main


def test_grid_is_every_combination_in_order():
    trials = draw({"lr": [0.1, 0.2], "dim": [8, 16]}, 10, "grid", 0)
    assert trials == [{"dim": 8, "lr": 0.1}, {"dim": 8, "lr": 0.2}, {"dim": 16, "lr": 0.1},
                      {"dim": 16, "lr": 0.2}]
    assert len(draw({"lr": [0.1, 0.2], "dim": [8, 16]}, 3, "grid", 0)) == 3
    with pytest.raises(ValueError, match="--grid needs lists"):
        draw({"lr": {"low": 0.1, "high": 1.0, "log": True}}, 3, "grid", 0)


def test_random_draws_are_distinct_in_range_and_repeat():
    space = {"dim": [8, 16, 32], "lr": {"low": 0.01, "high": 1.0, "log": True}}
    a = draw(space, 20, "random", 1)
    assert a == draw(space, 20, "random", 1) != draw(space, 20, "random", 2)
    assert all(0.01 <= t["lr"] <= 1.0 and t["dim"] in (8, 16, 32) for t in a)
    assert len({(t["dim"], t["lr"]) for t in a}) == 20
    small = draw({"dim": [8, 16]}, 5, "random", 0)  # more trials than points: repeats
    assert len(small) == 5 and {t["dim"] for t in small} == {8, 16}


def test_search_runs_trials_and_writes_the_table(tmp_path, capsys):
    graph = synthetic.write_dataset(tmp_path / "g", synthetic.generate(200, 5, 3000, seed=4))
    base = tmp_path / "base.yaml"
    base.write_text("dim: 16\nbatch_size: 256\nnegatives: 32\nepochs: 2\neval_every: 1\n"
                    "max_eval: 50\nprogress: false\nsearch:\n  lr: [0.01, 0.3]\n")
    out = tmp_path / "s"
    main(["--config", str(base), "--grid", "--trials", "5", "--space", "reciprocal=true,false",
          "--out", str(out), "--", "--data", str(graph)])
    result = json.loads((out / "search.json").read_text())
    rows = result["trials"]
    assert len(rows) == 4 and result["space"]["reciprocal"] == ["true", "false"]
    mrrs = [r["valid_mrr"] for r in rows]
    assert mrrs == sorted(mrrs, reverse=True) and all(m > 0 for m in mrrs)
    for r in rows:
        summary = json.loads((out / r["trial"] / "summary.json").read_text())
        assert summary["valid"]["mrr"] == r["valid_mrr"]
        assert summary["config"]["lr"] == float(r["params"]["lr"])
        assert summary["config"]["reciprocal"] == (r["params"]["reciprocal"] == "true")
    table = (out / "search.md").read_text()
    assert "| rank | trial | lr | reciprocal | valid MRR | test MRR |" in table
    assert table.count("| trial-") == 4 and table in capsys.readouterr().out + table
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "out" not in best and best["lr"] == float(rows[0]["params"]["lr"])
    again = parse_args(["--config", str(out / "best.yaml")])
    assert again.lr == best["lr"] and again.dim == 16


def test_bad_space_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--space", "nope=1,2", "--out", "x"])
    assert e.value.code == 2 and "--space 'nope=1,2'" in capsys.readouterr().err


FAST_TRIAL = ["--dim", "8", "--batch-size", "256", "--negatives", "32", "--epochs", "1",
              "--max-eval", "50", "--no-progress"]


@pytest.fixture
def small_graph(tmp_path):
    return synthetic.write_dataset(tmp_path / "g", synthetic.generate(200, 5, 3000, seed=4))


def test_search_without_a_valid_split_ranks_nothing_and_writes_no_best_yaml(small_graph,
                                                                           tmp_path, capsys):
    """Without valid.txt no trial has a valid MRR: formatting best.yaml's header failed with
    a TypeError after every trial had trained, and the table said 'None' for best epoch."""
    (small_graph / "valid.txt").unlink()
    out = tmp_path / "s"
    main(["--grid", "--space", "lr=0.1,0.2", "--out", str(out), "--", "--data",
          str(small_graph), *FAST_TRIAL])
    rows = json.loads((out / "search.json").read_text())["trials"]
    assert [r["valid_mrr"] for r in rows] == [None, None] and all(r["test_mrr"] for r in rows)
    assert not (out / "best.yaml").exists()
    assert "None" not in (out / "search.md").read_text()
    assert "no trial has a valid MRR" in capsys.readouterr().out


def test_search_refuses_the_out_of_an_earlier_search(small_graph, tmp_path):
    """A second search into the same --out replaced search.md/search.json with its own
    trials (or, where the trial folders held checkpoints or a best model, with one failure
    per trial) and left the first search's best.yaml beside them."""
    out = tmp_path / "s"
    args = ["--grid", "--space", "lr=0.1", "--out", str(out), "--", "--data", str(small_graph),
            *FAST_TRIAL]
    main(args)
    table = (out / "search.md").read_text()
    with pytest.raises(ValueError, match=r"--out .* holds an earlier search \(trial-000, "
                                         r"search.json, search.md, best.yaml\); pass another"):
        main(args)
    assert (out / "search.md").read_text() == table


def test_an_interrupted_search_keeps_the_table_of_its_finished_trials(small_graph, tmp_path,
                                                                      monkeypatch):
    """SIGINT in trial 2 (train.kge's JobExit, status 3): the table was only written after
    the last trial, so the finished trials were in no table at all."""
    from train.kge import train as kge_train
    real, calls = kge_train.run, []

    def run(config, comm=None):
        calls.append(config.out)
        if len(calls) == 2:
            raise jaxps.JobExit(3, "interrupted (SIGINT) after epoch 0: checkpoint written")
        return real(config, comm)

    monkeypatch.setattr(kge_train, "run", run)
    out = tmp_path / "s"
    with pytest.raises(jaxps.JobExit) as e:
        main(["--grid", "--space", "lr=0.1,0.2", "--out", str(out), "--", "--data",
              str(small_graph), *FAST_TRIAL])
    assert e.value.code == 3 and e.value.message.startswith(
        "search stopped in trial 2 of 2: interrupted (SIGINT)")
    assert "the 1 finished trials are ranked in" in e.value.message
    table = (out / "search.md").read_text()
    assert "1 of 2 trials" in table and "| trial-000 | 0.1 |" in table
    assert yaml.safe_load((out / "best.yaml").read_text())["lr"] == 0.1
