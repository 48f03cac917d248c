"""Dataset downloads (train.kge.datasets fetch, --data NAME --download) against a local HTTP
server on 127.0.0.1 serving small generated archives; registry entries injected per test."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, mpi_env
from train.kge import data, datasets, synthetic
from train.kge.data import DataError, load_dataset


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines in the test output
        pass


@pytest.fixture
def server(tmp_path):
    """(root folder served, base URL) of an HTTP server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_archive(root: Path, name: str, members: dict[str, str] | None = None) -> tuple[Path, Path]:
    """(archive in root, folder of the split files): a small generated graph as a .tar.gz."""
    src = synthetic.write_dataset(root.parent / f"src-{name}",
                                  synthetic.generate(60, 3, 900, seed=1))
    members = members or {s: f"{name}/{s}.txt" for s in data.SPLITS}
    archive = root / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, member in members.items():
            tar.add(src / f"{split}.txt", arcname=member)
        tar.add(src / "train.txt", arcname=f"{name}/README")
    return archive, src


def entry(name: str, urls, src: Path | None = None, **kw) -> datasets.DatasetInfo:
    counts = (0, 0, 0)
    if src is not None:
        ds = load_dataset(src, cache=False)
        counts = tuple(len(ds.splits[s]) for s in data.SPLITS)
    return datasets.DatasetInfo(name, tuple(urls), 60, 3, counts, **kw)


def leftovers(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) if dest.exists() else []


@pytest.mark.parametrize("members", [None, {"train": "kg_transductive_train.txt",
                                            "valid": "kg_transductive_valid.txt",
                                            "test": "kg_transductive_test.txt"}])
def test_fetch_checks_and_unpacks_an_archive(server, tmp_path, members):
    root, url = server
    archive, src = make_archive(root, "tiny", members)
    info = entry("Tiny", [url + "tiny.tar.gz"], src, sha256=sha(archive),
                 file_sha256={s: sha(src / f"{s}.txt") for s in data.SPLITS})
    folder = datasets.fetch(info, tmp_path / "home", say=lambda m: None)
    assert folder == tmp_path / "home" / "tiny"
    assert leftovers(tmp_path / "home") == ["tiny", "tiny/test.txt", "tiny/train.txt",
                                            "tiny/valid.txt"]  # no archive, no temporary files
    assert all((folder / f"{s}.txt").read_bytes() == (src / f"{s}.txt").read_bytes()
               for s in data.SPLITS)
    ds = load_dataset(folder, cache=False)
    assert tuple(len(ds.splits[s]) for s in data.SPLITS) == info.num_triples


def test_checksum_mismatch_is_clear_and_keeps_nothing(server, tmp_path):
    root, url = server
    archive, src = make_archive(root, "tiny")
    bad = entry("Tiny", [url + "tiny.tar.gz"], src, sha256="0" * 64)
    with pytest.raises(DataError, match=r"tiny.tar.gz: .*hash.*0000000000.*Nothing was kept"):
        datasets.fetch(bad, tmp_path / "a", say=lambda m: None)
    assert leftovers(tmp_path / "a") == []
    bad_file = entry("Tiny", [url + "tiny.tar.gz"], src, file_sha256={"test": "1" * 64})
    with pytest.raises(DataError, match=r"test.txt has sha256 [0-9a-f]{64}, expected 1111.*"
                                        r"nothing was kept"):
        datasets.fetch(bad_file, tmp_path / "b", say=lambda m: None)
    assert leftovers(tmp_path / "b") == []


def test_unreachable_network_fails_within_seconds(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/x.tar.gz"
    info = entry("Offline", [url, url.replace("x.tar", "y.tar")])
    t0 = time.perf_counter()
    with pytest.raises(datasets.DownloadError) as err:
        datasets.fetch(info, tmp_path, timeout=5, say=lambda m: None)
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert message.startswith(f"could not download Offline from {url} (")
    assert "Connection refused" in message and "; nor from " in message
    assert "download it by hand" in message and "--data FOLDER" in message
    assert leftovers(tmp_path) == []


def test_missing_file_and_mirror_fallback(server, tmp_path):
    root, url = server
    archive, src = make_archive(root, "tiny")
    info = entry("Tiny", [url + "gone.tar.gz", url + "tiny.tar.gz"], src, sha256="0" * 64)
    messages = []
    folder = datasets.fetch(info, tmp_path, say=messages.append)  # the sum is of urls[0]'s
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert any("gone.tar.gz" in m for m in messages) and any("tiny.tar.gz" in m for m in messages)
    assert datasets.fetch(info, tmp_path, say=messages.append) == folder  # already there
    assert messages[-1].startswith("Tiny: already in")


def test_fetch_a_folder_of_raw_files(server, tmp_path):
    root, url = server
    src = synthetic.write_dataset(root / "raw", synthetic.generate(60, 3, 900, seed=1))
    info = entry("Raw", [url + "raw/"], src, file_sha256={"train": sha(src / "train.txt")})
    folder = datasets.fetch(info, tmp_path, say=lambda m: None)
    assert all((folder / f"{s}.txt").read_bytes() == (src / f"{s}.txt").read_bytes()
               for s in data.SPLITS)


def test_cli_fetch_and_path_then_train_with_download(server, tmp_path, monkeypatch, capsys):
    root, url = server
    archive, src = make_archive(root, "tiny")
    info = entry("Tiny", [url + "tiny.tar.gz"], src, sha256=sha(archive))
    monkeypatch.setitem(datasets.REGISTRY, "tiny", info)
    monkeypatch.setenv("JAXPS_DATA", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        datasets.main(["path", "tiny"])
    assert e.value.code == 1 and "Tiny is not downloaded" in capsys.readouterr().err
    datasets.main(["fetch", "tiny"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "home" / "tiny")
    datasets.main(["path", "tiny"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "home" / "tiny")

    from train.kge.config import parse_args
    from train.kge.train import run
    monkeypatch.setenv("JAXPS_DATA", str(tmp_path / "home2"))
    summary = run(parse_args(["--data", "tiny", "--download", "--dim", "8", "--epochs", "1",
                              "--no-progress"]))
    assert (tmp_path / "home2" / "tiny" / "train.txt").is_file()
    assert summary["dataset"] == "tiny" and summary["test"]["mrr"] > 0


def test_cli_list_shows_every_entry_and_where(capsys):
    datasets.main(["list"])
    out = capsys.readouterr().out
    assert all(name in out for name in datasets.REGISTRY)
    assert "fb15k-237      14,541       237    272,115  17,535  20,466" in out


def test_data_nonexistent_folder_says_so():
    res = subprocess.run([sys.executable, "-m", "train.kge", "--data", "./nonexistent"],
                         cwd=REPO, env=mpi_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "--data ./nonexistent: no such folder" in res.stderr
    assert "not downloaded" not in res.stderr and "registered" not in res.stderr


PROGRAM = REPO / "tests" / "mpi_programs" / "fetch_on_ranks.py"


@pytest.mark.parametrize("per_rank", [False, True], ids=["shared-home", "home-per-rank"])
def test_download_on_two_ranks(server, tmp_path, per_rank):
    from tests.conftest import mpirun

    root, url = server
    make_archive(root, "tiny")
    home = tmp_path / "home"
    res = mpirun(2, [str(PROGRAM), url + "tiny.tar.gz", str(home),
                     *(["--per-rank"] if per_rank else [])], timeout=120)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    folders = {r: home / (f"rank{r}" if per_rank else "") / "tiny" for r in (0, 1)}
    assert all(f"rank {r}: {folders[r]}" in res.stdout for r in (0, 1)), res.stdout
    assert all((f / "train.txt").is_file() for f in folders.values())
    # Shared: rank 1 finds rank 0's copy and downloads nothing; per rank: each fetches its own.
    assert res.stderr.count("Tiny: downloading") == (2 if per_rank else 1), res.stderr


def test_download_failure_on_two_ranks_ends_the_job_within_seconds(tmp_path):
    from tests.conftest import mpirun

    t0 = time.perf_counter()
    res = mpirun(2, [str(PROGRAM), f"http://127.0.0.1:{closed_port()}/x.tar.gz",
                     str(tmp_path / "home")], timeout=60)
    assert res.returncode != 0 and time.perf_counter() - t0 < 30
    assert "could not download Tiny" in res.stderr and "Connection refused" in res.stderr
