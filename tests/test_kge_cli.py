"""End-to-end tests of `python -m train.kge` on tiny generated graphs (1 process and 2 ranks)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import jaxps

from train.kge import synthetic
from train.kge.__main__ import main
from train.kge.config import KgeConfig, parse_args
from train.kge.train import run

TINY = ["--dim", "32", "--epochs", "4", "--batch-size", "128", "--negatives", "64",
        "--eval-every", "2", "--max-eval", "200", "--no-progress"]
METRICS = {"mrr", "mr", "hits@1", "hits@3", "hits@10"}


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "graph"
    return synthetic.write_dataset(folder, synthetic.generate(300, 8, 6000, seed=3))


def random_mrr(num_entities: int) -> float:
    """Expected MRR of a uniformly random ranking of num_entities candidates."""
    return sum(1.0 / k for k in range(1, num_entities + 1)) / num_entities


def check_summary(out, ranks: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert {"valid", "test", "epochs", "seconds", "ps"} <= set(summary)
    assert METRICS <= set(summary["test"]) and METRICS <= set(summary["valid"])
    assert summary["ranks"] == ranks and summary["epochs"] == 4
    assert 0 <= summary["ps"]["local_fraction"] <= 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert {"loss", "examples_per_s", "local_fraction", "compiles"} <= set(lines[0])
    assert "valid" in lines[1] and "valid" not in lines[0]
    assert lines[-1]["loss"] < lines[0]["loss"]
    return summary


def test_tiny_run_writes_metrics_and_learns(tiny_graph, tmp_path, capsys):
    out = tmp_path / "out"
    main(["--data", str(tiny_graph), "--out", str(out), *TINY])
    summary = check_summary(out, ranks=1)
    assert summary["test"]["mrr"] > 3 * random_mrr(300), summary["test"]
    printed = capsys.readouterr().out
    assert "epoch   4/4" in printed and "valid MRR" in printed and "test " in printed
    emb = np.load(out / "entity_embeddings.npy")
    ids = (out / "entity_ids.txt").read_text().splitlines()
    assert emb.shape == (len(ids), 32) and np.isfinite(emb).all()
    from train.kge.plot import plot

    assert all(path.stat().st_size > 0 for path in plot(out))


def test_reciprocal_run_learns_and_exports_both_relation_tables(tiny_graph, tmp_path):
    out = tmp_path / "rec"
    summary = run(parse_args(["--data", str(tiny_graph), "--out", str(out), "--reciprocal",
                              *TINY]))
    assert summary["test"]["mrr"] > 3 * random_mrr(300), summary["test"]
    assert summary["test"]["head"]["mrr"] > 3 * random_mrr(300), summary["test"]
    forward = np.load(out / "relation_embeddings.npy")
    inverse = np.load(out / "reciprocal_relation_embeddings.npy")
    names = (out / "relation_ids.txt").read_text().splitlines()
    assert forward.shape == inverse.shape == (len(names), 32)
    assert not np.allclose(forward, inverse)


def test_two_ranks_give_a_summary(tiny_graph, tmp_path):
    from tests.conftest import mpirun

    out = tmp_path / "out2"
    res = mpirun(2, ["-m", "train.kge", "--data", str(tiny_graph), "--out", str(out), *TINY],
                 timeout=150)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    summary = check_summary(out, ranks=2)
    assert summary["test"]["mrr"] > 3 * random_mrr(300), summary["test"]
    assert res.stdout.count("epoch   4/4") == 1  # only rank 0 prints


def test_default_graph_is_generated_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = KgeConfig(dim=16, epochs=1, batch_size=256, negatives=32, max_eval=50,
                       synthetic_entities=200, synthetic_relations=5, synthetic_triples=3000,
                       progress=False)
    summary = run(config)
    assert (tmp_path / "cache" / "jaxps" / "synthetic").is_dir()
    assert summary["test"]["num_triples"] == 50 and summary["valid"] is not None


def test_resume_continues_from_the_checkpoint(tiny_graph, tmp_path):
    out = tmp_path / "ckpt"
    base = ["--data", str(tiny_graph), "--out", str(out), "--dim", "16", "--batch-size", "256",
            "--negatives", "32", "--max-eval", "50", "--eval-every", "0", "--no-progress"]
    main([*base, "--epochs", "2", "--checkpoint-every", "1"])
    newest = jaxps.list_checkpoints(out / "checkpoints")[-1]
    assert jaxps.read_manifest(newest)["meta"]["epoch"] == 2
    summary = run(parse_args([*base, "--epochs", "3", "--resume"]))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert summary["epochs"] == 3 and math.isfinite(summary["test"]["mrr"])


@pytest.mark.parametrize("options", [
    ["--loss", "bce", "--dropout", "0.2", "--sampling", "local"],
    ["--loss", "margin", "--optimizer", "adam", "--lr", "0.01", "--reg-type", "l2"],
    ["--model", "distmult", "--lookahead", "0", "--technique", "classic", "--negatives", "1000",
     "--no-reciprocal"],
    ["--reciprocal", "--dropout", "0.1", "--technique", "nups"],
])
def test_training_options_run(options, tiny_graph, tmp_path):
    summary = run(parse_args(["--data", str(tiny_graph), "--dim", "16", "--epochs", "1",
                              "--batch-size", "256", "--negatives", "32", "--max-eval", "50",
                              "--no-progress", *options]))
    assert math.isfinite(summary["last_epoch"]["loss"]) and summary["test"]["mrr"] > 0


def test_folder_without_test_split_trains_and_says_so(tmp_path, capsys):
    splits = synthetic.generate(200, 5, 3000, seed=4)
    folder = synthetic.write_dataset(tmp_path / "notest", {k: splits[k] for k in ("train", "valid")})
    summary = run(parse_args(["--data", str(folder), "--dim", "16", "--epochs", "1",
                              "--max-eval", "50", "--no-progress"]))
    assert summary["test"] is None and summary["valid"]["mrr"] > 0
    assert "missing: test (no metrics for them)" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value,valid", [("--model", "complx", "'complex', 'distmult'"),
                                              ("--optimizer", "sgd", "'adagrad', 'adam'"),
                                              ("--loss", "hinge", "'ce', 'bce', 'margin'")])
def test_unknown_option_lists_the_valid_ones(flag, value, valid, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args([flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err and valid in err


def test_config_checks_values_at_construction():
    with pytest.raises(ValueError, match="unknown model 'nope'; valid: complex, distmult"):
        KgeConfig(model="nope")
    with pytest.raises(ValueError, match="need --out"):
        KgeConfig(checkpoint_every=1)
