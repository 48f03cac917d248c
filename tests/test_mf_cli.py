"""End-to-end tests of `python -m train.mf` on tiny data (1 process): outputs, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

import jaxps
from train.common.resume import ResumeError
from train.mf.__main__ import main
from train.mf.config import MfConfig, parser

TINY = ["--data", "synthetic:rows=600,cols=200,cells=12000,rank=3,noise=0.3", "--dim", "8",
        "--batch-size", "256", "--lr", "0.1", "--reg", "0.02", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_help_lists_every_option_with_its_default():
    text = parser().format_help()
    for f in dataclasses.fields(MfConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "(default: 100)" in text and "shuffled" in text and "dsgd" in text


def test_tiny_run_writes_outputs_and_learns(tmp_path, capsys):
    out = tmp_path / "out"
    main([*TINY, "--epochs", "6", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert {"valid", "test", "epochs", "seconds", "ps"} <= set(summary)
    assert set(summary["test"]) == {"rmse", "mae", "num_ratings"} and summary["epochs"] == 6
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert {m["compiles"] for m in lines} == {1}  # compiled once, before the first epoch
    assert lines[-1]["valid"]["rmse"] < lines[0]["valid"]["rmse"]
    # A mean-only predictor: the std of the test ratings; the model must beat it well.
    assert summary["test"]["rmse"] < 0.8 * 1.05, summary["test"]
    printed = capsys.readouterr().out
    assert "epoch   6/6" in printed and "valid RMSE" in printed and "ratings/s" in printed
    factors, ids = np.load(out / "item_factors.npy"), (out / "item_ids.txt").read_text().split()
    assert factors.shape == (200, 8) and len(ids) == 200 and np.load(out / "user_bias.npy").shape == (600,)
    assert json.loads((out / "model.json").read_text())["dim"] == 8
    from train.plot import plot
    assert all(p.stat().st_size > 0 for p in plot(out))


def test_resume_continues_from_the_checkpoint(tmp_path):
    out = tmp_path / "out"
    main([*TINY, "--epochs", "2", "--out", str(out), "--checkpoint-every", "1"])
    first = json.loads((out / "summary.json").read_text())
    main([*TINY, "--epochs", "4", "--out", str(out), "--resume", "--checkpoint-every", "1"])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["test"]["rmse"] < first["test"]["rmse"]
    assert resumed["seconds"] > resumed["seconds_this_run"]
    newest = jaxps.list_checkpoints(out / "checkpoints")[-1]
    assert jaxps.read_manifest(newest)["meta"]["epoch"] == 4
    with pytest.raises(ResumeError, match="--dim: checkpoint 8, this run 4"):
        main([*TINY, "--dim", "4", "--epochs", "5", "--out", str(out), "--resume"])


def test_bad_file_writes_nothing(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t2\t5\n1\t3\tfive\n")
    out = tmp_path / "out"
    from train.mf.data import DataError
    with pytest.raises(DataError, match=r"bad.txt:2: rating 'five' is not a number"):
        main(["--train", str(bad), "--out", str(out), "--no-progress"])
    assert not out.exists()


def test_option_errors():
    with pytest.raises(SystemExit):
        main(["--data", "x", "--train", "y"])
    with pytest.raises(ValueError, match="--split must be three fractions"):
        MfConfig(split="0.5,0.5")
    with pytest.raises(ValueError, match="LOW must be < HIGH"):
        MfConfig(rating_range="5,1")


def test_progress_off_a_terminal_is_plain_lines(tmp_path, capsys):
    """As train.kge: redirected to a file, the progress within an epoch is a line per 10% of
    its batches, not tqdm's carriage-return updates (which MF drew wherever stderr went)."""
    main([*[a for a in TINY if a != "--no-progress"], "--epochs", "1"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("epoch 1: ")]
    assert "\r" not in err and "|" not in err and 8 <= len(lines) <= 9
    assert all(re.match(r"epoch 1: \d+% \(\d+/\d+ batches\) .* ETA", x) for x in lines)


def test_train_file_alone_says_nothing_was_evaluated(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = {(int(u), int(i)) for u, i in rng.integers(0, 30, (400, 2))}
    path = tmp_path / "train.txt"
    path.write_text("".join(f"u{u}\ti{i}\t{1 + (u * i) % 5}\n" for u, i in sorted(lines)))
    summary = main(["--train", str(path), "--dim", "4", "--epochs", "1", "--batch-size", "64",
                    "--no-progress"])
    printed = capsys.readouterr().out
    assert "no valid/test split: nothing evaluated (pass --test FILE" in printed, printed
    assert "rmse" not in printed.split("nothing evaluated")[1]
    assert summary is None or (summary["valid"] is None and summary["test"] is None)
