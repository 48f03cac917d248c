"""The bad-input catalogue of `python -m train.mf` (as tests/test_bad_input.py is train.kge's).

Each asserts the message (what, where, how to fix), the exit status where a process runs, and
that nothing was written or half-applied. Multi-rank cases run under mpiexec with a hard
timeout and must end within 30 s. Also here: stop and resume (SIGINT mid-epoch then
--resume is bit-identical on one rank; a 2-rank checkpoint resumes on 1 rank).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxps
from tests.conftest import (MPIEXEC, REPO, assert_usage_error, mpi_env,
                            sigint_after_first_epoch)
from tests.test_bad_input import _rank_pid
from train.common.resume import ResumeError
from train.mf.config import parse_args
from train.mf.data import DataError, load_files, parse_file
from train.mf.train import run

SPEC = "synthetic:rows=600,cols=200,cells=12000,rank=3,noise=0.3"
FAST = ["--dim", "8", "--batch-size", "256", "--lr", "0.1", "--reg", "0.02", "--no-progress"]
END_WITHIN = 30.0  # seconds: a failing multi-rank job must be over by then


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def env(tmp_path) -> dict:
    return mpi_env() | {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def cli(tmp_path, args, *, ranks: int = 1, timeout: float = 120, argv=None):
    """(status, stdout + stderr, seconds) of ``python -m train.mf args`` on ``ranks`` ranks."""
    cmd = argv or ([sys.executable, "-m", "train.mf", *args] if ranks == 1 else
                   [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "train.mf", *args])
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env(tmp_path), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s:\n{e.stdout}\n{e.stderr}")
    return res.returncode, res.stdout + res.stderr, time.perf_counter() - t0


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _ended(status, out, seconds, message):
    assert status != 0, out[-3000:]
    assert message in out, out[-3000:]
    assert seconds < END_WITHIN, f"took {seconds:.1f} s"


# ----- options: argparse-style, status 2, before anything runs ------------------------------
@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--reg", "nan"], "--reg must be a finite number, got nan"),
    (["--init-scale", "nan"], "--init-scale must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--reg", "-0.1"], "--reg must be >= 0"),
    (["--init-scale", "0"], "--init-scale must be > 0"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--dim", "0"], "--dim must be >= 1"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--lookahead", "65"], "--lookahead must be in [0, 64]"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1"),
    (["--peer-timeout", "-1"], "--peer-timeout must be >= 0"),
    (["--peer-timeout", "nan"], "--peer-timeout must be a finite number"),
    (["--valid-fraction", "1", "--train", "x"], "--valid-fraction must be in [0, 1)"),
    (["--split", "nan,nan,nan"], "--split must be three fractions"),
    (["--rating-range", "nan,5"], "--rating-range must be two finite numbers"),
    (["--synthetic-cells", "0"], "--synthetic-cells must be >= 1"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--resume"], "--resume need --out DIR"),
])
def test_bad_option(args, message, capsys):
    assert_usage_error(parse_args, args, message, capsys)


def test_nan_synthetic_parameter_is_refused():
    with pytest.raises(DataError, match="need finite skew >= 0, finite noise >= 0"):
        run(parse_args(["--data", SPEC + ",noise=nan", *FAST]))


# ----- ratings files: DataError with file:line, nothing cached --------------------------------
G = "1\t2\t5\n2\t3\t4\n3\t1\t3\n"  # three good lines


@pytest.mark.parametrize("text,where,message", [
    (G + "4\t 5\t3\n", ":4", "item field has leading or trailing blanks"),
    (G + "4 \t5\t3\n", ":4", "user field has leading or trailing blanks"),
    (G + "4\t5\t3 \n", ":4", "rating field has leading or trailing blanks"),
    ("1,2,5\n4,5 ,3\n", ":2", "item field has leading or trailing blanks"),
    ("1::2::5\n4:: 5::3\n", ":2", "item field has leading or trailing blanks"),
    ("1 2 5\n4  5 3\n", ":2", "expected 3 or 4 fields"),     # a doubled space: an empty field
    ("1 2 5\n4\t5 3\n", ":2", "expected 3 or 4 fields"),
    (G + "4\t5\x00\t3\n", ":4", "control character"),
    (G + "4\t5\tnan\n", ":4", "rating 'nan' is not finite"),
    (G + "4\t5\tinf\n", ":4", "rating 'inf' is not finite"),
    (G + "4\t5\tfive\n", ":4", "rating 'five' is not a number"),
    ("1,2,five\n1,3,4\n", ":1", "rating 'five' is not a number"),  # not taken for a header
    (G + "user\titem\trating\n", ":4", "rating 'rating' is not a number"),  # only line 1
    (G + "4\t5\n", ":4", "expected 3 or 4 fields"),
    (G + "\t5\t3\n", ":4", "empty user id"),
    (G.encode() + b"4\t5\t\xff\n", ":4", "not valid UTF-8"),
    ("", "", "no ratings"),
])
def test_bad_ratings_line(tmp_path, text, where, message):
    path = tmp_path / "r.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError) as e:
        load_files(str(path))
    assert f"{path}{where}" in str(e.value) and message in str(e.value), str(e.value)
    assert files(tmp_path / "cache") == []  # nothing cached


def test_header_line_is_skipped_and_lines_keep_their_numbers(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.5,99\n2,10,3,98\n")
    raw = parse_file(path)
    assert raw.lines.tolist() == [2, 3] and raw.ratings.tolist() == [4.5, 3.0]
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.5,99\n2,10,9,98\n")
    with pytest.raises(DataError, match=r"ratings.csv:3: rating 9 outside the declared range "
                                         r"\[1, 5\] \(1 such lines\)"):
        parse_file(path, rating_range=(1, 5))


def test_spaces_inside_string_ids_are_kept(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("ann lee\tbook one\t4\nbob\tbook one\t3\n")
    d = load_files(str(path), cache=False)
    assert d.user_ids.tolist() == ["ann lee", "bob"] and d.num_items == 1


@pytest.mark.parametrize("split", ["valid", "test"])
def test_empty_valid_or_test_file_fails_before_training(tmp_path, split):
    train, other = tmp_path / "train.txt", tmp_path / f"{split}.txt"
    train.write_text(G)
    other.write_text("\n")
    status, out, _ = cli(tmp_path, ["--train", str(train), f"--{split}", str(other), "--out",
                                    str(tmp_path / "o"), *FAST])
    assert status == 1 and f"{other}: no ratings" in out and "[jaxps rank 0]" in out, out
    assert "epoch" not in out.split("no ratings")[0]
    assert not (tmp_path / "o").exists()  # nothing written before the data was read


def test_a_split_too_small_to_hold_any_rating_is_an_error(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(G)  # 3 ratings x 0.05 rounds to 0 ratings for valid and for test
    with pytest.raises(DataError, match="the valid split is empty"):
        run(parse_args(["--data", str(path), *FAST]))
    summary = run(parse_args(["--data", str(path), "--split", "1,0,0", "--epochs", "1", *FAST]))
    assert summary["test"] is None and summary["valid"] is None  # asked for no test: none


# ----- output folder: checked before training -------------------------------------------------
def test_out_is_an_existing_file(tmp_path):
    (tmp_path / "f").write_text("keep me")
    status, out, _ = cli(tmp_path, ["--data", SPEC, "--out", str(tmp_path / "f"), *FAST])
    assert status == 1 and "--out" in out and "is an existing file, not a folder" in out, out
    assert (tmp_path / "f").read_text() == "keep me"
    assert "ratings " not in out  # refused before the data was read


def test_out_is_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(OSError, match=rf"--out {ro}/run: {ro} is read-only \(mode 555\)"):
        run(parse_args(["--data", SPEC, "--out", str(ro / "run"), *FAST]))
    assert files(ro) == []


# ----- resume that checks ---------------------------------------------------------------------
def _trained(out: Path, *extra) -> list[str]:
    args = ["--data", SPEC, "--out", str(out), *FAST, *extra]
    run(parse_args([*args, "--epochs", "2", "--checkpoint-every", "1"]))
    return args


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.jsonl").write_text("previous\n")
    with pytest.raises(ResumeError, match="--resume: no checkpoint in .*; pass --resume auto"):
        run(parse_args(["--data", SPEC, "--out", str(out), "--resume", *FAST]))
    assert (out / "metrics.jsonl").read_text() == "previous\n"  # not overwritten


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path, capsys):
    summary = run(parse_args(["--data", SPEC, "--out", str(tmp_path / "o"), "--resume", "auto",
                              "--epochs", "1", *FAST]))
    assert "no checkpoint in" in capsys.readouterr().out and summary["resumed_from"] is None


def test_resume_checks_settings_dataset_and_epochs(tmp_path, capsys):
    out = tmp_path / "o"
    args = _trained(out)
    before = files(out)
    with pytest.raises(ResumeError, match="trained with different settings") as e:
        run(parse_args([*args, "--epochs", "3", "--resume", "--dim", "4", "--optimizer", "sgd"]))
    assert "--dim: checkpoint 8, this run 4" in str(e.value)
    assert "--optimizer: checkpoint 'adagrad', this run 'sgd'" in str(e.value)
    other = [*args]
    other[other.index(SPEC)] = SPEC + ",seed=1"  # same shape, other cells
    with pytest.raises(ResumeError, match="dataset user/item ids and training cells"):
        run(parse_args([*other, "--epochs", "3", "--resume"]))
    with pytest.raises(ResumeError, match="--epochs 1 is below the checkpoint's epoch 2"):
        run(parse_args([*args, "--epochs", "1", "--resume"]))
    with pytest.raises(ResumeError, match="holds checkpoints of an earlier run .* pass --resume"):
        run(parse_args([*args, "--epochs", "1"]))
    assert files(out) == before  # none of these touched --out
    first = json.loads((out / "summary.json").read_text())["seconds"]
    capsys.readouterr()
    summary = run(parse_args([*args, "--epochs", "3", "--resume", "--lr", "0.05"]))
    text = capsys.readouterr().out
    assert "resumed from epoch 2 (step 21600, written by 1 rank(s) with adaptive)" in text, text
    assert "note: differs from the checkpoint: lr: 0.1 -> 0.05" in text
    assert summary["seconds"] > summary["seconds_this_run"] and summary["seconds"] > first * 0.5
    assert [json.loads(x)["epoch"] for x in
            (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_kge_checkpoint_is_not_an_mf_one(tmp_path):
    out = tmp_path / "o"
    args = _trained(out)
    newest = jaxps.list_checkpoints(out / "checkpoints")[-1]
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["meta"]["entrypoint"] = "train.kge"
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResumeError, match="not a train.mf checkpoint"):
        run(parse_args([*args, "--epochs", "3", "--resume"]))


def test_corrupt_checkpoint_is_named_and_the_previous_one_works(tmp_path):
    out = tmp_path / "o"
    args = _trained(out)
    older, newest = jaxps.list_checkpoints(out / "checkpoints")
    shard = newest / "item.00000.rows.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(jaxps.CheckpointError) as e:
        run(parse_args([*args, "--epochs", "3", "--resume"]))
    text = str(e.value)
    assert "checkpoint shard 1 of 1 (table 'item')" in text and "checksum mismatch" in text
    assert f"the previous checkpoint is at {older}" in text, text
    summary = run(parse_args([*args, "--epochs", "3", "--resume", str(older)]))
    assert summary["resumed_from"] == str(older) and np.isfinite(summary["test"]["rmse"])


def test_keep_checkpoints_keeps_the_newest(tmp_path):
    run(parse_args(["--data", SPEC, "--out", str(tmp_path / "o"), *FAST, "--epochs", "3",
                    "--checkpoint-every", "1", "--keep-checkpoints", "2"]))
    kept = jaxps.list_checkpoints(tmp_path / "o" / "checkpoints")
    assert [jaxps.read_manifest(p)["meta"]["epoch"] for p in kept] == [2, 3]
    assert {p.name for p in (tmp_path / "o" / "checkpoints").iterdir()} == {k.name for k in kept}


# ----- a full disk at export: the results are kept --------------------------------------------
_LIMITED = """
import resource, signal, sys
from mpi4py import MPI  # initialized first: MPI's own shared-memory files are not limited
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
sys.argv = ["train.mf", *{args!r}]
import jaxps
from train.mf.__main__ import main
from train.mf.train import load
from train.mf.config import parse_args
load(parse_args(sys.argv[1:]), MPI.COMM_WORLD)  # the data cache exists before the limit
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
jaxps.run_main(main)
"""


def test_full_disk_at_export_keeps_the_results(tmp_path):
    out = tmp_path / "o"
    # User factors: 600 x 64 x 4 = 154 KB > 100 KB; summary and metrics are smaller.
    args = ["--data", SPEC, "--out", str(out), *FAST, "--dim", "64", "--epochs", "1"]
    status, text, _ = cli(tmp_path, [], argv=[sys.executable, "-c",
                                              _LIMITED.format(limit=100_000, args=args)])
    assert status == 1 and "File too large" in text and "[jaxps rank 0] error" in text, text
    assert text.index("test ") < text.index("[jaxps rank 0] error")  # results printed first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["rmse"] > 0 and "exports" not in summary
    assert not [f for f in files(out) if f.endswith(".tmp")], files(out)
    assert not (out / "user_factors.npy").exists()


# ----- stop and resume ------------------------------------------------------------------------
def test_sigint_mid_epoch_then_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    base = [sys.executable, "-m", "train.mf", "--data", SPEC, *FAST, "--batch-size", "32"]
    out = tmp_path / "stopped"
    status, text = sigint_after_first_epoch([*base, "--epochs", "500", "--out", str(out)], out,
                                            env(tmp_path), pause=0.2)  # into the next epoch
    assert status == 3, text[-3000:]
    assert "SIGINT: finishing the current step" in text and "checkpoint written to" in text
    (ckpt,) = jaxps.list_checkpoints(out / "checkpoints")
    meta = jaxps.read_manifest(ckpt)["meta"]
    epochs = str(meta["epoch"] + 2)
    status, resumed, _ = cli(tmp_path, [*base[3:], "--epochs", epochs, "--out", str(out),
                                        "--resume"])
    assert status == 0 and f"resumed from epoch {meta['epoch']}" in resumed, resumed[-3000:]
    status, straight, _ = cli(tmp_path, [*base[3:], "--epochs", epochs, "--out",
                                         str(tmp_path / "fresh")])
    assert status == 0, straight[-3000:]
    for name in ("user_factors", "item_factors", "user_bias", "item_bias"):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"),
                                      np.load(tmp_path / "fresh" / f"{name}.npy"))


def test_two_rank_dsgd_checkpoint_resumes_on_one_rank(tmp_path):
    out = tmp_path / "o"
    args = ["--data", SPEC, "--out", str(out), *FAST, "--schedule", "dsgd", "--technique",
            "relocation"]
    status, text, _ = cli(tmp_path, [*args, "--epochs", "2", "--checkpoint-every", "1"],
                          ranks=2, timeout=150)
    assert status == 0, text[-3000:]
    before = json.loads((out / "summary.json").read_text())
    summary = run(parse_args([*args, "--epochs", "3", "--resume"]))
    assert summary["ranks"] == 1 and summary["resumed_from"].endswith("step-000000021600")
    assert summary["test"]["rmse"] < before["test"]["rmse"]


def test_two_ranks_sigterm_to_one_rank_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "o"
    args = ["--data", SPEC, "--out", str(out), *FAST, "--batch-size", "16", "--schedule",
            "dsgd", "--epochs", "300"]
    proc = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-m", "train.mf", *args],
                            cwd=REPO, env=env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM)
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, text[-3000:]
    assert "[jaxps rank 1] SIGTERM: finishing the current step" in text, text[-3000:]
    assert "checkpoint written to" in text and "continue with --resume" in text
    (ckpt,) = jaxps.list_checkpoints(out / "checkpoints")
    meta = jaxps.read_manifest(ckpt)["meta"]
    status, text, _ = cli(tmp_path, [*args[:-1], str(meta["epoch"] + 1), "--resume"], ranks=2,
                          timeout=150)
    assert status == 0 and "written by 2 rank(s) with adaptive" in text, text[-3000:]
    assert json.loads((out / "summary.json").read_text())["ranks"] == 2


# ----- several ranks: every failure ends the job within seconds -------------------------------
def test_two_ranks_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    _ended(*cli(tmp_path, ["--data", SPEC, "--out", str(tmp_path / "f"), *FAST], ranks=2,
                timeout=60), "[jaxps rank 0] error: OutputError: --out")
    assert (tmp_path / "f").read_text() == "x"


def test_two_ranks_synthetic_matrix_impossible(tmp_path):
    _ended(*cli(tmp_path, ["--data", "synthetic:rows=10,cols=10,cells=80", *FAST], ranks=2,
                timeout=60), "cells must be at most half of rows x cols")


def test_two_ranks_padded_field(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(G + "4\t 5\t3\n")
    _ended(*cli(tmp_path, ["--train", str(path), *FAST], ranks=2, timeout=60),
           f"{path}:4: item field has leading or trailing blanks")
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_two_ranks_resume_without_checkpoint(tmp_path):
    _ended(*cli(tmp_path, ["--data", SPEC, "--out", str(tmp_path / "o"), "--resume", *FAST],
                ranks=2, timeout=60), "--resume: no checkpoint in")


def test_two_hosts_without_shared_folders_train_to_the_end(tmp_path):
    """Ranks with their own cache and output folders (two hosts): each makes its own copy."""
    argv = [str(MPIEXEC)]
    for host in ("A", "B"):
        argv += ["-n", "1", "env", f"XDG_CACHE_HOME={tmp_path / host / 'cache'}",
                 sys.executable, "-m", "train.mf", "--data", SPEC, "--out",
                 str(tmp_path / host / "out"), *FAST, "--epochs", "1", ":"]
    status, out, _ = cli(tmp_path, [], argv=argv[:-1], timeout=150)
    assert status == 0, out[-3000:]
    summary = json.loads((tmp_path / "A" / "out" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["test"]["rmse"] > 0
    for host in ("A", "B"):
        assert list((tmp_path / host / "cache").rglob("*.npz")), host


@pytest.mark.parametrize("saved,ranks,schedule,expect", [
    ({"position": 4096, "sub_epoch": 0, "ranks": 2}, 1, "shuffled", (4096, 0, "")),
    ({"position": 0, "sub_epoch": 1, "ranks": 2}, 2, "dsgd", (0, 1, "")),
    ({"position": 0, "sub_epoch": 1, "ranks": 2}, 1, "dsgd", (0, 0, "from its start")),
    ({"position": 4096, "sub_epoch": 0, "ranks": 2}, 2, "columns", (0, 0, "from its start")),
    ({"position": 0, "sub_epoch": 0, "ranks": 2}, 3, "dsgd", (0, 0, "")),
])
def test_where_a_resumed_epoch_starts(saved, ranks, schedule, expect):
    from train.mf.resume import start_within
    old = "dsgd" if saved["sub_epoch"] else "shuffled"
    meta = {"epoch": 3, **saved, "config": {"schedule": old}}
    position, sub, note = start_within(meta, parse_args(["--schedule", schedule]), ranks)
    assert (position, sub) == expect[:2] and expect[2] in note
    assert bool(note) == bool(expect[2])
