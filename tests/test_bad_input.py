"""The bad-input catalogue: one test per way a user can get a run wrong.

Each asserts the message (what, where, how to fix), the exit status where a process runs, and
that nothing was written or half-applied. Multi-rank cases run under mpiexec with a hard
timeout and must end within 30 s: a failure on one rank may never leave the others waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxps
from tests.conftest import MPIEXEC, REPO, assert_usage_error, mpi_env
from train.kge import synthetic
from train.kge.config import parse_args
from train.kge.data import DataError, load_dataset
from train.common.outputs import OutputError, check_out_dir
from train.kge.resume import ResumeError
from train.kge.train import run

FAST = ["--dim", "16", "--batch-size", "256", "--negatives", "32", "--max-eval", "50",
        "--eval-every", "0", "--no-progress"]
END_WITHIN = 30.0  # seconds: a failing multi-rank job must be over by then


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "graph"
    return synthetic.write_dataset(folder, synthetic.generate(200, 5, 3000, seed=5))


def cli(args, *, ranks: int = 1, timeout: float = 120, env=None, argv=None):
    """(status, stdout + stderr, seconds) of ``python -m train.kge args`` on ``ranks`` ranks."""
    cmd = argv or ([sys.executable, "-m", "train.kge", *args] if ranks == 1 else
                   [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "train.kge", *args])
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env or mpi_env(), capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s:\n{e.stdout}\n{e.stderr}")
    return res.returncode, res.stdout + res.stderr, time.perf_counter() - t0


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----- options: argparse-style, status 2, before anything runs ------------------------------
@pytest.mark.parametrize("args,message", [
    (["--margin", "nan", "--loss", "margin"], "--margin must be a finite number, got nan"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--reg", "nan"], "--reg must be a finite number, got nan"),
    (["--init-scale", "nan"], "--init-scale must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--init-scale", "-1"], "--init-scale must be > 0"),
    (["--reg", "-0.1"], "--reg must be >= 0"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--dim", "7"], "--dim 7: complex: dim must be even"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1"),
    (["--peer-timeout", "-1"], "--peer-timeout must be >= 0"),
    (["--synthetic-entities", "1"], "--synthetic-entities must be >= 2"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--resume"], "--resume need --out DIR"),
])
def test_bad_option(args, message, capsys):
    assert_usage_error(parse_args, args, message, capsys)


def test_nan_option_exits_2_from_the_command_line(tmp_path):
    status, out, _ = cli(["--margin", "nan", "--loss", "margin", "--out", str(tmp_path / "o")])
    assert status == 2 and "--margin must be a finite number, got nan" in out, out
    assert not (tmp_path / "o").exists()


# ----- data files: DataError with file:line, no cache written ------------------------------
B = "e1\tr1\te2\ne2\tr1\te3\ne3\tr1\te1\n"  # three good lines


def _folder(tmp_path, train, valid="e1\tr1\te2\n", test="e2\tr1\te1\n") -> Path:
    folder = tmp_path / "kg"
    folder.mkdir()
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


@pytest.mark.parametrize("train,where,message", [
    (B + "a\t r\tb\n", "train.txt:4", "relation field has leading or trailing spaces"),
    (B + "a\tr\tb \n", "train.txt:4", "tail field has leading or trailing spaces"),
    (B + " a\tr\tb\n", "train.txt:4", "head field has leading or trailing spaces"),
    ("head\trelation\ttail\n" + B, "train.txt:1", "a header line, not a triple"),
    ("subject\tpredicate\tobject\n" + B, "train.txt:1", "a header line"),
    (B + "a\tr\n", "train.txt:4", "expected 3 tab-separated fields"),
    (B + "a\tr\tb\tc\n", "train.txt:4", "expected 3 tab-separated fields"),
    (B + "a\t\tb\n", "train.txt:4", "empty relation field"),
    (B.encode() + b"a\tr\t\xff\n", "train.txt:4", "not valid UTF-8"),
    (B.encode() + b"a\tr\x00\tb\n", "train.txt:4", "control character"),
    (B + "a\tr\rb\n", "train.txt:4", "carriage return"),
    ("", "train.txt", "no triples"),
])
def test_bad_data_line(tmp_path, train, where, message):
    folder = _folder(tmp_path, train)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        load_dataset(folder, cache_dir=cache)
    assert where in str(e.value) and message in str(e.value), str(e.value)
    assert files(cache) == []  # nothing cached


@pytest.mark.parametrize("split", ["valid", "test"])
def test_empty_valid_or_test_is_an_error_before_training(tmp_path, split):
    folder = _folder(tmp_path, B, **{split: "\n"})
    with pytest.raises(DataError, match=rf"{split}\.txt: no triples; fill it .* or delete it"):
        load_dataset(folder, cache=False)
    status, out, seconds = cli(["--data", str(folder), "--out", str(tmp_path / "o"), *FAST])
    assert status == 1 and f"{split}.txt: no triples" in out and "[jaxps rank 0]" in out
    assert "epoch" not in out.split("no triples")[0]  # failed before any training
    assert files(tmp_path / "o") == []


def test_spaces_inside_names_are_kept(tmp_path):
    ds = load_dataset(_folder(tmp_path, B + "new york\tin\tusa\n"), cache=False)
    assert "new york" in ds.entity_ids.tolist()


def test_unseen_entities_are_reported_with_their_count(tmp_path, capsys):
    folder = _folder(tmp_path, B, test="e1\tr1\tnever_trained\ne2\tr1\te1\n")
    summary = run(parse_args(["--data", str(folder), "--epochs", "1", *FAST]))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dataset"))
    assert "test 2 (1 with an entity or relation unseen in train)" in line, line
    assert summary["unseen"] == {"valid": 0, "test": 1}


# ----- library calls: InputError, nothing applied --------------------------------------------
def test_key_out_of_range_and_nan_delta_apply_nothing():
    with jaxps.ParameterServer({"e": jaxps.TableSpec(10, 2)}) as ps:
        before = ps.pull("e", np.arange(10))
        with pytest.raises(jaxps.InputError, match="out of range"):
            ps.push("e", np.array([1, 10]), np.ones((2, 2), np.float32))
        with pytest.raises(jaxps.InputError, match="NaN|finite"):
            ps.push("e", np.array([1, 2]), np.array([[1, 1], [np.nan, 1]], np.float32))
        np.testing.assert_array_equal(ps.pull("e", np.arange(10)), before)


# ----- output folder: checked before training -------------------------------------------------
def test_out_is_an_existing_file(tmp_path, graph):
    (tmp_path / "f").write_text("keep me")
    status, out, _ = cli(["--data", str(graph), "--out", str(tmp_path / "f"), *FAST])
    assert status == 1 and "--out" in out and "is an existing file, not a folder" in out
    assert (tmp_path / "f").read_text() == "keep me"


def test_out_is_read_only(tmp_path, graph):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    status, out, _ = cli(["--data", str(graph), "--out", str(ro), *FAST])
    assert status == 1 and f"--out {ro}: {ro} is read-only (mode 555)" in out, out
    assert files(ro) == []


def test_out_without_enough_space(tmp_path):
    with pytest.raises(OutputError, match=r"MiB free, this run needs about .* MiB"):
        check_out_dir(tmp_path / "o", 1 << 62)


# ----- resume that checks ---------------------------------------------------------------------
def _trained(graph, out: Path, *extra) -> list[str]:
    args = ["--data", str(graph), "--out", str(out), *FAST, *extra]
    run(parse_args([*args, "--epochs", "2", "--checkpoint-every", "1"]))
    return args


def test_resume_without_a_checkpoint_is_an_error(tmp_path, graph):
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.jsonl").write_text("previous\n")
    with pytest.raises(ResumeError, match="--resume: no checkpoint in .*; pass --resume auto"):
        run(parse_args(["--data", str(graph), "--out", str(out), "--resume", *FAST]))
    assert (out / "metrics.jsonl").read_text() == "previous\n"  # not overwritten


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path, graph, capsys):
    summary = run(parse_args(["--data", str(graph), "--out", str(tmp_path / "o"), "--resume",
                              "auto", "--epochs", "1", *FAST]))
    assert "no checkpoint in" in capsys.readouterr().out and summary["resumed_from"] is None


@pytest.mark.parametrize("change,listed", [
    (["--model", "distmult"], "--model: checkpoint 'complex', this run 'distmult'"),
    (["--model", "transe", "--loss", "margin"], "--loss: checkpoint 'ce', this run 'margin'"),
    (["--dim", "32"], "--dim: checkpoint 16, this run 32"),
    (["--no-reciprocal"], "--reciprocal: checkpoint True, this run False"),
    (["--optimizer", "adam"], "--optimizer: checkpoint 'adagrad', this run 'adam'"),
])
def test_resume_with_other_settings_lists_the_differences(tmp_path, graph, change, listed):
    args = _trained(graph, tmp_path / "o")
    before = files(tmp_path / "o")
    with pytest.raises(ResumeError, match="trained with different settings") as e:
        run(parse_args([*args, "--epochs", "3", "--resume", *change]))
    assert listed in str(e.value), str(e.value)
    assert files(tmp_path / "o") == before


def test_resume_on_another_dataset_is_refused(tmp_path, graph):
    args = _trained(graph, tmp_path / "o")
    other = synthetic.write_dataset(tmp_path / "other", synthetic.generate(200, 5, 3000, seed=6))
    args[args.index(str(graph))] = str(other)
    with pytest.raises(ResumeError, match="dataset entity/relation names"):
        run(parse_args([*args, "--epochs", "3", "--resume"]))


def test_a_fresh_run_into_an_out_with_checkpoints_is_refused(tmp_path, graph):
    args = _trained(graph, tmp_path / "o")
    before = files(tmp_path / "o")
    with pytest.raises(ResumeError, match="holds checkpoints of an earlier run .* pass --resume"):
        run(parse_args([*args, "--epochs", "1"]))
    assert files(tmp_path / "o") == before


def test_epochs_below_the_checkpoint_is_an_error(tmp_path, graph):
    args = _trained(graph, tmp_path / "o")
    with pytest.raises(ResumeError, match="--epochs 1 is below the checkpoint's epoch 2"):
        run(parse_args([*args, "--epochs", "1", "--resume"]))


def test_resume_says_where_and_counts_all_seconds(tmp_path, graph, capsys):
    args = _trained(graph, tmp_path / "o")
    first = json.loads((tmp_path / "o" / "summary.json").read_text())["seconds"]
    capsys.readouterr()
    summary = run(parse_args([*args, "--epochs", "3", "--resume", "--lr", "0.05"]))
    out = capsys.readouterr().out
    assert "resumed from epoch 2 (step " in out and "written by 1 rank(s) with adaptive" in out
    assert "note: differs from the checkpoint: lr: 0.1 -> 0.05" in out
    assert summary["seconds"] > summary["seconds_this_run"] and summary["seconds"] > first * 0.5
    assert [json.loads(x)["epoch"] for x in
            (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def _damage(ckpt: Path, how: str) -> Path:
    shard = ckpt / "entity.00000.rows.npy"
    if how == "flip":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif how == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif how == "missing":
        shard.unlink()
    else:
        (ckpt / "manifest.json").write_text("{not json")
    return shard


@pytest.mark.parametrize("how,message", [
    ("flip", "checksum mismatch"), ("truncate", "truncated"), ("missing", "missing"),
    ("manifest", "manifest.json is unreadable")])
def test_corrupt_checkpoint_is_named_with_the_previous_one(tmp_path, graph, how, message):
    args = _trained(graph, tmp_path / "o")
    older, newest = jaxps.list_checkpoints(tmp_path / "o" / "checkpoints")
    _damage(newest, how)
    with pytest.raises(jaxps.CheckpointError) as e:
        run(parse_args([*args, "--epochs", "3", "--resume", str(newest)]))
    text = str(e.value)
    assert message in text and f"the previous checkpoint is at {older}" in text, text
    if how != "manifest":
        assert "checkpoint shard 1 of 1 (table 'entity')" in text, text
    # ... and the previous checkpoint can be used.
    summary = run(parse_args([*args, "--epochs", "3", "--resume", str(older)]))
    assert summary["resumed_from"] == str(older) and np.isfinite(summary["test"]["mrr"])


def test_keep_checkpoints_keeps_the_newest(tmp_path, graph):
    run(parse_args(["--data", str(graph), "--out", str(tmp_path / "o"), *FAST, "--epochs", "3",
                    "--checkpoint-every", "1", "--keep-checkpoints", "2"]))
    kept = jaxps.list_checkpoints(tmp_path / "o" / "checkpoints")
    assert [jaxps.read_manifest(p)["meta"]["epoch"] for p in kept] == [2, 3]
    assert files(tmp_path / "o" / "checkpoints")[0] == kept[0].name  # nothing else there
    assert {p.name for p in (tmp_path / "o" / "checkpoints").iterdir()} == {k.name for k in kept}


# ----- a full disk: nothing partial left, finished work kept ---------------------------------
_LIMITED = """
import resource, signal, sys
from mpi4py import MPI  # initialized first: MPI's own shared-memory files are not limited
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["train.kge", *{args!r}]
import jaxps
from train.kge.__main__ import main
jaxps.run_main(main)
"""


def _limited(args, limit: int):
    return cli([], argv=[sys.executable, "-c", _LIMITED.format(limit=limit, args=args)])


def test_full_disk_at_export_keeps_the_results(tmp_path, graph):
    out = tmp_path / "o"
    load_dataset(graph)  # the dataset cache exists before the limit applies
    # Entity embeddings: 200 x 64 x 4 = 51 KB > 40 KB; everything else is smaller.
    status, text, _ = _limited(["--data", str(graph), "--out", str(out), *FAST, "--dim", "64",
                                "--epochs", "1"], 40_000)
    assert status == 1 and "File too large" in text and "[jaxps rank 0] error" in text, text
    assert text.index("test ") < text.index("[jaxps rank 0] error")  # results printed first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["mrr"] > 0 and "exports" not in summary
    assert not [f for f in files(out) if f.endswith(".tmp")], files(out)
    assert not (out / "entity_embeddings.npy").exists()


def test_failed_checkpoint_write_removes_its_temporary_files(tmp_path, graph):
    out = tmp_path / "o"
    load_dataset(graph)
    # A checkpoint's entity rows: 200 x 128 x 4 = 102 KB > 90 KB; the exports are smaller.
    status, text, _ = _limited(["--data", str(graph), "--out", str(out), *FAST, "--dim", "64",
                                "--epochs", "2", "--checkpoint-every", "1"], 90_000)
    assert status == 1 and "CheckpointError" in text and "not written" in text, text
    assert files(out / "checkpoints") == []  # no partial shard or temporary folder left


# ----- several ranks: every failure ends the job within seconds -------------------------------
def _ended(status, out, seconds, message):
    assert status != 0, out[-3000:]
    assert message in out, out[-3000:]
    assert seconds < END_WITHIN, f"took {seconds:.1f} s"


def test_two_ranks_out_is_a_file(tmp_path, graph):
    (tmp_path / "f").write_text("x")
    _ended(*cli(["--data", str(graph), "--out", str(tmp_path / "f"), *FAST], ranks=2,
                timeout=60), "[jaxps rank 0] error: OutputError: --out")


def test_two_ranks_out_is_read_only(tmp_path, graph):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _ended(*cli(["--data", str(graph), "--out", str(ro / "run"), *FAST], ranks=2, timeout=60),
           "is read-only")
    assert files(ro) == []


def test_two_ranks_synthetic_graph_too_small(tmp_path):
    env = mpi_env() | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    _ended(*cli(["--synthetic-entities", "2", "--synthetic-triples", "10", *FAST], ranks=2,
                timeout=60, env=env), "cannot generate the synthetic graph")
    assert not list((tmp_path / "cache").rglob("*.txt"))  # no half-made graph cached


def test_two_ranks_bad_data_line(tmp_path):
    folder = _folder(tmp_path, B + "a\t r\tb\n")
    _ended(*cli(["--data", str(folder), *FAST], ranks=2, timeout=60),
           "train.txt:4: relation field has leading or trailing spaces")


def test_two_ranks_resume_without_checkpoint(tmp_path, graph):
    _ended(*cli(["--data", str(graph), "--out", str(tmp_path / "o"), "--resume", *FAST],
                ranks=2, timeout=60), "--resume: no checkpoint in")


def _two_hosts(tmp_path, args):
    """mpiexec with one rank per emulated host: own cache folder and own output folder."""
    argv = [str(MPIEXEC)]
    for host in ("A", "B"):
        argv += ["-n", "1", "env", f"XDG_CACHE_HOME={tmp_path / host / 'cache'}",
                 sys.executable, "-m", "train.kge", "--out", str(tmp_path / host / "out"),
                 *args]
        argv.append(":")
    return cli([], argv=argv[:-1], timeout=150)


def test_two_hosts_without_shared_folders_train_to_the_end(tmp_path):
    status, out, _ = _two_hosts(tmp_path, [*FAST, "--epochs", "2", "--synthetic-entities", "300",
                                           "--synthetic-relations", "5",
                                           "--synthetic-triples", "5000"])
    assert status == 0, out[-3000:]
    summary = json.loads((tmp_path / "A" / "out" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["test"]["mrr"] > 0
    for host in ("A", "B"):  # each rank generated its own copy of the graph
        assert list((tmp_path / host / "cache").rglob("test.txt")), host


def test_two_hosts_checkpoint_needs_a_shared_folder(tmp_path):
    status, out, seconds = _two_hosts(tmp_path, [*FAST, "--epochs", "2", "--checkpoint-every",
                                                 "1", "--synthetic-entities", "300",
                                                 "--synthetic-relations", "5",
                                                 "--synthetic-triples", "5000"])
    _ended(status, out, seconds, "must be on a file system shared by all ranks")
    for host in ("A", "B"):  # no temporary shard left on either host
        assert files(tmp_path / host / "out" / "checkpoints") == [], host


def test_two_ranks_sigterm_to_one_rank_checkpoints_and_resumes_on_three(tmp_path, graph):
    out = tmp_path / "o"
    args = ["--data", str(graph), "--out", str(out), *FAST, "--batch-size", "16",
            "--epochs", "50"]
    proc = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-m", "train.kge", *args],
                            cwd=REPO, env=mpi_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        rank1 = _rank_pid(proc.pid, 1)
        os.kill(rank1, 15)
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, text[-3000:]
    assert "[jaxps rank 1] SIGTERM: finishing the current step" in text, text[-3000:]
    assert "checkpoint written to" in text and "continue with --resume" in text
    (ckpt,) = jaxps.list_checkpoints(out / "checkpoints")
    epochs = jaxps.read_manifest(ckpt)["meta"]["epoch"] + 1
    # On another rank count: the data position of a mid-epoch checkpoint holds for any.
    status, text, _ = cli([*args[:-1], str(epochs), "--resume"], ranks=3, timeout=150)
    assert status == 0 and "written by 2 rank(s) with adaptive" in text, text[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 3 and summary["test"]["mrr"] > 0


def _rank_pid(mpiexec_pid: int, rank: int) -> int:
    """The pid of ``rank`` among mpiexec's descendants (PMI_RANK in its environment)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for pid in _descendants(mpiexec_pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PMI_RANK={rank}".encode() in env and b"python" in Path(
                    f"/proc/{pid}/cmdline").read_bytes():
                return pid
        time.sleep(0.2)
    pytest.fail(f"no rank {rank} under mpiexec {mpiexec_pid}")


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout.split()
    kids = [int(x) for x in out]
    return kids + [d for k in kids for d in _descendants(k)]


def test_two_ranks_corrupt_shard_is_named_on_every_rank(tmp_path, graph):
    out = tmp_path / "o"
    args = ["--data", str(graph), "--out", str(out), *FAST, "--checkpoint-every", "1"]
    status, text, _ = cli([*args, "--epochs", "2"], ranks=2, timeout=120)
    assert status == 0, text[-3000:]
    older, newest = jaxps.list_checkpoints(out / "checkpoints")
    shard = newest / "entity.00001.rows.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01
    shard.write_bytes(bytes(data))
    status, text, seconds = cli([*args, "--epochs", "3", "--resume"], ranks=2, timeout=60)
    _ended(status, text, seconds, "checkpoint shard 2 of 2 (table 'entity')")
    assert "checksum mismatch" in text and f"the previous checkpoint is at {older}" in text
    assert text.count("CheckpointError: checkpoint shard 2 of 2") >= 2  # every rank says it
