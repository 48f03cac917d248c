"""Early stopping and the best model (train/kge/early.py): training stops after --patience
validations without improvement, and the best epoch's model is kept in out/best, restored,
tested and exported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.kge import early, synthetic
from train.kge import train as kge_train
from train.kge.config import parse_args
from train.kge.resume import ResumeError


def test_tracker_counts_validations_without_enough_gain():
    t = early.BestTracker(patience=2, min_delta=0.01, out=None)
    assert t.observe(1, 0.30) and t.bad == 0
    assert t.observe(2, 0.305) and t.bad == 1  # a new best, but not by min_delta
    assert not t.should_stop()
    assert not t.observe(3, 0.20) and t.bad == 2 and t.should_stop()
    assert (t.best_epoch, t.best_mrr) == (2, 0.305)
    assert "2 validations without a valid MRR above 0.3050 + 0.01" in t.reason()
    assert not early.BestTracker(0, 0.0, None).should_stop()


@pytest.fixture
def graph(tmp_path):
    return synthetic.write_dataset(tmp_path / "g", synthetic.generate(300, 8, 6000, seed=3))


def test_stops_early_and_exports_the_best_epoch(graph, tmp_path, monkeypatch, capsys):
    """The valid MRR seen by the loop is made to fall after epoch 2 (the real evaluation
    runs; only its MRR is replaced), so the best model is epoch 2's, not the last one."""
    real = kge_train.run_evaluation
    fake_mrr = iter([0.9, 0.5, 0.4])
    snapshots = {}

    def evaluation(ps, scorers, widths, triples, filter_index, config, comm, **kw):
        result = real(ps, scorers, widths, triples, filter_index, config, comm, **kw)
        if len(snapshots) < 3:  # the loop's validations, epochs 2, 4 and 6
            snapshots[len(snapshots)] = kge_train.read_table(ps, "entity",
                                                             columns=widths["entity"])
            result["mrr"] = next(fake_mrr)
        return result

    monkeypatch.setattr(kge_train, "run_evaluation", evaluation)
    out = tmp_path / "out"
    summary = kge_train.run(parse_args([
        "--data", str(graph), "--out", str(out), "--dim", "16", "--epochs", "20",
        "--batch-size", "256", "--negatives", "32", "--eval-every", "2", "--max-eval", "100",
        "--no-progress", "--patience", "2", "--checkpoint-every", "1",
        "--keep-checkpoints", "1"]))
    assert summary["epochs_trained"] == 6 and summary["best_epoch"] == 2
    assert summary["best_restored"] and summary["stopped"].startswith("early stopping: 2")
    saved = json.loads((out / "summary.json").read_text())
    assert saved["best_epoch"] == 2 and saved["stopped"] == summary["stopped"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]
    exported = np.load(out / "entity_embeddings.npy")
    np.testing.assert_array_equal(exported, snapshots[0])  # epoch 2's rows
    assert not np.allclose(exported, snapshots[2])
    # --keep-checkpoints 1 pruned checkpoints/, never out/best.
    assert [p.name for p in (out / "best").glob("step-*")] == ["step-000000000002"]
    assert len(list((out / "checkpoints").glob("step-*"))) == 1
    assert "at epoch 2: its model (restored from" in capsys.readouterr().out


def test_last_epoch_best_is_tested_as_is(graph, tmp_path):
    out = tmp_path / "out"
    summary = kge_train.run(parse_args([
        "--data", str(graph), "--out", str(out), "--dim", "16", "--epochs", "4",
        "--batch-size", "256", "--negatives", "32", "--eval-every", "2", "--max-eval", "100",
        "--no-progress", "--lr", "0.2"]))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    mrr2 = lines[1]["valid"]["mrr"]
    if summary["valid"]["mrr"] > mrr2:  # the usual case: still learning at epoch 4
        assert summary["best_epoch"] == 4 and not summary["best_restored"]
        assert [p.name for p in (out / "best").glob("step-*")] == ["step-000000000004"]
    else:
        assert summary["best_epoch"] == 2 and summary["best_restored"]
    assert summary["stopped"] == "--epochs 4 trained"


def test_replay_finds_the_best_checkpoint_again(tmp_path):
    (tmp_path / "best" / "step-000000000004").mkdir(parents=True)
    (tmp_path / "best" / "step-000000000004" / "manifest.json").write_text("{}")
    history = [{"epoch": 2, "valid": {"mrr": 0.3}}, {"epoch": 3},
               {"epoch": 4, "valid": {"mrr": 0.4}}, {"epoch": 6, "valid": {"mrr": 0.35}}]
    t = early.BestTracker(patience=3, min_delta=0.0, out=tmp_path)
    t.replay(history)
    assert (t.best_epoch, t.best_mrr, t.bad) == (4, 0.4, 1)
    assert t.best_path == tmp_path / "best" / "step-000000000004"


def test_a_run_continues_from_the_best_model(graph, tmp_path, capsys):
    """out/best holds what a checkpoint of checkpoints/ holds: --resume out/best/step-N
    continues from the best epoch (e.g. with a lower lr), with the history up to it."""
    out = tmp_path / "out"
    common = ["--data", str(graph), "--dim", "16", "--batch-size", "256", "--negatives", "32",
              "--eval-every", "2", "--max-eval", "100", "--no-progress"]
    kge_train.run(parse_args(common + ["--out", str(out), "--epochs", "4"]))
    best = sorted((out / "best").glob("step-*"))[-1]
    epoch = int(best.name.split("-")[1])
    again = tmp_path / "again"
    summary = kge_train.run(parse_args(common + ["--out", str(again), "--epochs", "6",
                                                 "--resume", str(best), "--lr", "0.05"]))
    printed = capsys.readouterr().out
    assert f"resumed from epoch {epoch} " in printed and "lr: 0.1 -> 0.05" in printed
    lines = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 7))
    assert summary["epochs_trained"] == 6


def test_a_checkpoint_without_history_is_refused_before_loading(graph, tmp_path):
    from train.common.resume import ResumeError

    out = tmp_path / "out"
    common = ["--data", str(graph), "--dim", "16", "--batch-size", "256", "--negatives", "32",
              "--eval-every", "2", "--max-eval", "100", "--no-progress"]
    kge_train.run(parse_args(common + ["--out", str(out), "--epochs", "4"]))
    best = sorted((out / "best").glob("step-*"))[-1]
    manifest = json.loads((best / "manifest.json").read_text())
    del manifest["meta"]["history"]  # as earlier versions wrote out/best
    (best / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResumeError, match="no training history.*checkpoints/ folder"):
        kge_train.run(parse_args(common + ["--out", str(tmp_path / "b"), "--epochs", "6",
                                           "--resume", str(best)]))


def test_a_fresh_run_refuses_an_out_holding_an_earlier_best_model(graph, tmp_path):
    """A second run into the same --out (no checkpoints/, so no --resume) would share best/
    with the first: keep=1 there deleted the new run's lower-epoch best, and the run failed
    after training (CheckpointError) with no results written. It is refused before training,
    with or without --resume auto, and the earlier run's files are left as they were."""
    out = tmp_path / "out"
    args = ["--data", str(graph), "--out", str(out), "--dim", "16", "--epochs", "2",
            "--batch-size", "256", "--negatives", "32", "--max-eval", "100", "--no-progress"]
    kge_train.run(parse_args(args + ["--eval-every", "1"]))
    [earlier] = (out / "best").glob("step-*")
    metrics = (out / "metrics.jsonl").read_text()
    for extra in ([], ["--resume", "auto"]):
        with pytest.raises(ResumeError, match=rf"holds the best model of an earlier run "
                           rf"\({earlier}\).*delete .*best to start afresh"):
            kge_train.run(parse_args(args + ["--eval-every", "2", *extra]))
    assert (out / "metrics.jsonl").read_text() == metrics
    assert list((out / "best").glob("step-*")) == [earlier]
