"""python -m train.kge.search (train/kge/search.py): trial draws, and a 2-trial grid run with
its run folders, summary table and best.yaml."""

from __future__ import annotations

import json

import pytest
import yaml

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
