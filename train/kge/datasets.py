"""Registry of standard link-prediction benchmarks: where to get them, what they should contain.

``python -m train.kge.datasets list | fetch NAME | path NAME`` is its command line;
`resolve` turns ``--data`` (a folder or a registered name) into a dataset folder for
`data.load_dataset`; `fetch` downloads a registered dataset into
``data_home()/<lowercase name>/{train,valid,test}.txt``.

Where datasets live (`data_home`): ``$JAXPS_DATA`` when set, else ``datasets/`` in the
platform's user cache folder (``pooch.os_cache("jaxps")``: ``~/.cache/jaxps`` on Linux,
honouring ``$XDG_CACHE_HOME``). A registered name is looked up in ``../shared/data/<name>``
beside this checkout first (the project's test copies), then there, whatever the working folder.

URLs: ``urls[0]`` is the primary source (the ConvE repository for FB15k-237, WN18RR, YAGO3-10,
Kinship, Nations, UMLS, as in ../shared/data; the CoDEx repository; the Wikidata5M project page's
link), the rest are mirrors tried in order (LibKGE's ``data/download_all.sh`` mirror at the
University of Mannheim, Zenodo). A URL ending in "/" is a folder of raw ``train.txt`` /
``valid.txt`` / ``test.txt``; anything else is a tar archive whose split files are found by
base name (``train.txt``, or ``*_train.txt`` / ``*-train.txt`` as in Wikidata5M's release).
Downloads go through ``pooch`` (streamed to a temporary file, checked, then renamed).

Checksums: no source publishes a checksum of its archive, so `DatasetInfo.sha256` is None
(unknown) for all entries; it is checked whenever it is set. Instead, `file_sha256` holds the
sha256 of the extracted split files, measured on the byte-for-byte copies in ../shared/data;
they are checked for downloads from ``urls[0]`` (mirrors repackage the files, and are unverified).

Counts are of the raw files, all splits together (so FB15k-237 has 14,541 entities although
28 test triples use an entity absent from train); see each entry's note for the source.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pooch

from train.kge.data import SPLITS, DataError, user_cache_dir

_CONVE = "https://github.com/TimDettmers/ConvE/raw/master/"
_LIBKGE = "https://web.informatik.uni-mannheim.de/pi1/kge-datasets/"
_CODEX = "https://raw.githubusercontent.com/tsafavi/codex/master/data/triples/"
_CODEX_ZENODO = "https://zenodo.org/record/4281094/files/"


class DownloadError(OSError):
    """A dataset could not be fetched from any of its URLs (offline, moved, refused)."""


@dataclass(frozen=True)
class DatasetInfo:
    """One benchmark: its sources and the counts its files should give.

    Attributes:
      name: display name, e.g. "FB15k-237"; its lowercase form is the folder name.
      urls: primary source first, then mirrors.
      num_entities, num_relations: distinct names over all three splits.
      num_triples: (train, valid, test) line counts.
      sha256: of the archive at urls[0]; None = not published (unknown), not checked.
      file_sha256: split -> sha256 of the split file from urls[0]; None = unknown.
      note: where the counts come from, and anything that bites.
    """

    name: str
    urls: tuple[str, ...]
    num_entities: int
    num_relations: int
    num_triples: tuple[int, int, int]
    sha256: str | None = None
    file_sha256: Mapping[str, str] | None = field(default=None, compare=False)
    note: str = ""

    @property
    def folder(self) -> str:
        return self.name.lower()


_INFOS = (
    DatasetInfo("FB15k-237", (_CONVE + "FB15k-237.tar.gz", _LIBKGE + "fb15k-237.tar.gz"),
                14541, 237, (272115, 17535, 20466), file_sha256={
                    "train": "6e4c2782169af21e9743f3b1d200886f5d595bf6bc504ec1351720949c5cdfae",
                    "valid": "cf6309010852f6a8d47a45df830a426415d1ee6f7a3970a8376ff1fb81db4a5c",
                    "test": "5711cf41623ceb4eacc50eb6108a3ca6565c7492e3caaf82a3e355cc660d1574"},
                note="Toutanova & Chen 2015. Counts measured on the ConvE files (CRLF line endings); "
                     "28 test / 9 valid triples have an entity unseen in train."),
    DatasetInfo("WN18RR", (_CONVE + "WN18RR.tar.gz", _LIBKGE + "wnrr.tar.gz"),
                40943, 11, (86835, 3034, 3134),
                note="Dettmers et al. 2018 (ConvE). Counts from the ConvE paper / LibKGE; "
                     "210 test triples have an entity unseen in train. LibKGE calls it 'wnrr'."),
    DatasetInfo("CoDEx-S", (_CODEX + "codex-s/", _CODEX_ZENODO + "codex-s.tar.gz?download=1"),
                2034, 42, (32888, 1827, 1828), file_sha256={
                    "train": "64f93b7f314f3936a6f65739721429db3f6a7c8f5a1e1104ec3bb544f7434f59",
                    "valid": "3831c0e57daef03c3a18cdd1a72e370b496f696c5218883d35c7d2ab8a6a772c",
                    "test": "27127fcb34688c4778e88a39ef3c9b540807da846021e9d9685660ac1838aca1"},
                note="Safavi & Koutra 2020. Counts measured on tsafavi/codex data/triples/codex-s."),
    DatasetInfo("CoDEx-M", (_CODEX + "codex-m/", _CODEX_ZENODO + "codex-m.tar.gz?download=1"),
                17050, 51, (185584, 10310, 10311),
                note="Safavi & Koutra 2020. Counts from the CoDEx README / paper."),
    DatasetInfo("CoDEx-L", (_CODEX + "codex-l/", _CODEX_ZENODO + "codex-l.tar.gz?download=1"),
                77951, 69, (551193, 30622, 30622),
                note="Safavi & Koutra 2020. Counts from the CoDEx README / paper."),
    DatasetInfo("Wikidata5M", (
        "https://www.dropbox.com/s/6sbhm0rwo4l73jq/wikidata5m_transductive.tar.gz?dl=1",
        "https://zenodo.org/record/5546383/files/wikidata5m_transductive.tar.gz",
        _LIBKGE + "wikidata5m.tar.gz"),
                4594485, 822, (20614279, 5163, 5133),
                note="Wang et al. 2019 (KEPLER), transductive split; counts from the project page "
                     "https://deepgraphlearning.github.io/project/wikidata5m (its entity count is "
                     "the whole graph's; the split files may name slightly fewer). ~21M lines."),
    DatasetInfo("YAGO3-10", (_CONVE + "YAGO3-10.tar.gz", _LIBKGE + "yago3-10.tar.gz"),
                123182, 37, (1079040, 5000, 5000),
                note="Mahdisoltani et al. 2015, split by Dettmers et al. 2018; counts from ConvE."),
    DatasetInfo("UMLS", (_CONVE + "umls.tar.gz", _LIBKGE + "umls.tar.gz"),
                135, 46, (5216, 652, 661), file_sha256={
                    "train": "873ef4925516b83e7f6f8cc02b4be51d848828710a7f65a956f0ac4a9e452f35",
                    "valid": "025c98f8a4891e2a6582ec5b40ee0d904031edad9c52554522f4b7904820c98e",
                    "test": "a7eb529a3d2810fcc96341ccc97c625a5e202f8389673aa6bd317eeebbb79014"},
                note="Kok & Domingos 2007; ConvE split. Counts measured on the ConvE files."),
    DatasetInfo("Kinship", (_CONVE + "kinship.tar.gz", _LIBKGE + "kinship.tar.gz"),
                104, 25, (8544, 1068, 1074), file_sha256={
                    "train": "738612111a6acf0e39662bde24c7e72a4d1edf20931beea077da367dda689731",
                    "valid": "c56f8630a583178b1e569f11a64aa535ae1ce0b0912d8b1e24716be2b37f04da",
                    "test": "05e5733265761d55be9c05bfaff5a8d0808df46f9c1e9d66cc3f2fe114e43d88"},
                note="Denham 1973 via Kemp et al. 2006; ConvE split. Counts measured on the ConvE files."),
    DatasetInfo("Nations", (_CONVE + "nations.tar.gz", _LIBKGE + "nations.tar.gz"),
                14, 55, (1592, 199, 201), file_sha256={
                    "train": "0830fa9da8e5bba2ccdaa45b7bdc9130451ba66b09ff2708f35fccaf82473e57",
                    "valid": "2b337a62e51a2f45c283eac98a70d21b7e0e102136be1539b2a52c652a7b0530",
                    "test": "3971085165b47b6aeaec68058c6d8d98b3005e929db81268410b95ae4db770ab"},
                note="Rummel 1950-65 via Kemp et al. 2006; ConvE split. Counts measured on the ConvE files."),
)
REGISTRY: Mapping[str, DatasetInfo] = {info.folder: info for info in _INFOS}
_ALIASES = {"wnrr": "wn18rr", "kinships": "kinship"}


def get(name: str) -> DatasetInfo:
    """The registry entry for `name` (case-insensitive; LibKGE's folder names work too)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(i.name for i in _INFOS)}, "
                        "or pass a folder holding train.txt, valid.txt, test.txt")
    return REGISTRY[key]


def is_registered(name: str) -> bool:
    return _ALIASES.get(name.lower(), name.lower()) in REGISTRY


def data_home() -> Path:
    """Where `fetch` puts datasets: ``$JAXPS_DATA``, else ``<user cache>/datasets``."""
    return Path(os.environ["JAXPS_DATA"]) if os.environ.get("JAXPS_DATA") else (
        user_cache_dir() / "datasets")


def search_path() -> list[Path]:
    """Folders searched for ``<lowercase name>/`` by `resolve`, in order: ``../shared/data``
    beside this checkout, then `data_home`."""
    checkout = Path(__file__).resolve().parents[2]
    return [checkout.parent / "shared" / "data", data_home()]


def find(name: str) -> Path | None:
    """The folder of registered dataset `name` in `search_path`, or None if not downloaded."""
    info = get(name)
    for root in search_path():
        if (root / info.folder / "train.txt").is_file():
            return root / info.folder
    return None


def _looks_like_path(text: str) -> bool:
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(sep in text for sep in seps) or text.startswith("~") or text in (".", "..")


def resolve(name_or_path: str | os.PathLike, *, download: bool = False,
            timeout: float = 60.0) -> Path:
    """A dataset folder for ``--data``: a path is taken as a path, a name as a registry name.

    A `Path`, or text with a path separator (``./umls``, ``data/kg``), is a folder and must
    exist. A bare word is a registered name (so a folder ``umls`` that happens to be in the
    working folder is not taken for the dataset; pass ``./umls`` for it); an unregistered
    bare word naming an existing folder is that folder. A registered name is found through
    `search_path`; with ``download=True`` a missing one is fetched into `data_home`.

    Raises:
      DataError: no such folder; an unknown name; a registered dataset not downloaded
        (the message says how to get it).
      DownloadError: ``download=True`` and no URL could be fetched.
    """
    text = os.fspath(name_or_path)
    is_path = isinstance(name_or_path, os.PathLike) or _looks_like_path(text) or (
        not is_registered(text) and Path(text).exists())
    if is_path:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "no such folder"
            raise DataError(f"--data {text}: {what}; pass a folder holding train.txt, "
                            "valid.txt, test.txt (one head<TAB>relation<TAB>tail per line)")
        return folder
    if not is_registered(text):
        raise DataError(f"--data {text}: no such folder, and not a registered dataset name "
                        f"(known: {', '.join(i.folder for i in _INFOS)}; see python -m "
                        "train.kge.datasets list); pass a folder holding train.txt, valid.txt, "
                        "test.txt")
    if (folder := find(text)) is not None:
        return folder
    if download:
        return fetch(text, timeout=timeout)
    info = get(text)
    local = (f"; a folder ./{text} exists here: pass --data ./{text} to use it"
             if Path(text).is_dir() else "")
    raise DataError(f"dataset {info.name} is not downloaded (looked in "
                    f"{', '.join(str(r / info.folder) for r in search_path())}); add --download "
                    f"to train.kge's options to fetch it into {data_home()}, or run python -m "
                    f"train.kge.datasets fetch "
                    f"{info.folder}{local}")


def fetch(name: str | DatasetInfo, dest: str | os.PathLike | None = None, *,
          timeout: float = 60.0, force: bool = False, say=None) -> Path:
    """Download a dataset into ``<dest>/<lowercase name>/`` (default dest: `data_home`).

    Tries `DatasetInfo.urls` in order; checks `sha256` / `file_sha256` (when known) for the
    primary URL. Everything is built in a temporary folder beside the target; the split
    files are moved into place only once all are complete and verified, so a failure leaves
    no partial file behind. An already complete folder is kept unless ``force``.

    Args:
      name: a registry name, or a `DatasetInfo` (e.g. for a private mirror).
      timeout: seconds to connect and between received bytes, per URL.
      say: ``str -> None`` for progress messages; default: stderr.

    Raises:
      DownloadError: no URL could be fetched (offline...): download it by hand instead.
      DataError: a checksum mismatch, or an archive without a train file.
    """
    info = name if isinstance(name, DatasetInfo) else get(name)
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = Path(dest) if dest is not None else data_home()
    folder = root / info.folder
    if not force and (folder / "train.txt").is_file():
        say(f"{info.name}: already in {folder}")
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{info.folder}.{os.getpid()}.download"
    failures = []
    try:
        for url in info.urls:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            say(f"{info.name}: downloading {url}")
            try:
                files = _fetch_splits(info, url, tmp, timeout)
            except DownloadError as e:
                failures.append(f"{url} ({e})")
                continue
            folder.mkdir(exist_ok=True)
            for split, path in files.items():
                os.replace(path, folder / f"{split}.txt")
            say(f"{info.name}: {', '.join(f'{s}.txt' for s in files)} in {folder}")
            return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raise DownloadError(f"could not download {info.name} from {'; nor from '.join(failures)}; "
                        f"download it by hand (see the URL) into {folder} and pass --data FOLDER")


download = fetch  # the name of earlier versions


def resolve_on_ranks(name_or_path: str, *, download: bool, comm) -> Path:
    """Collective `resolve`: rank 0 first (fetching with ``download``), so that its failure
    fails every rank with its message; then every other rank, which fetches on its own only
    where it does not see rank 0's copy (another host with its own cache folder)."""
    import jaxps

    folder = jaxps.run_on_root(lambda: resolve(name_or_path, download=download), comm=comm)
    if comm.Get_rank() != 0:
        folder = resolve(name_or_path, download=download)
    return folder


def _fetch_splits(info: DatasetInfo, url: str, tmp: Path, timeout: float) -> dict[str, Path]:
    """The verified split files of `url`, in `tmp`. DownloadError: try the next URL."""
    primary = url == info.urls[0]
    sums = dict(info.file_sha256 or {}) if primary else {}
    if url.endswith("/"):
        files = {s: _retrieve(f"{url}{s}.txt", sums.pop(s, None), tmp, f"{s}.txt", timeout)
                 for s in SPLITS}
    else:
        archive = _retrieve(url, info.sha256 if primary else None, tmp, "archive", timeout)
        try:
            files = _extract(archive, url, tmp)
        except tarfile.TarError as e:
            raise DownloadError(f"not a readable tar archive: {e}") from e
        archive.unlink()
    for split, expected in sums.items():
        if split in files and (got := _sha256(files[split])) != expected:
            raise DataError(f"{url}: {split}.txt has sha256 {got}, expected {expected}; the "
                            "source changed or the download is corrupted; nothing was kept")
    return files


def _retrieve(url: str, sha256: str | None, tmp: Path, fname: str, timeout: float) -> Path:
    """One file through pooch (a temporary name, the hash checked, then renamed)."""
    import requests  # pooch's own HTTP client

    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https", "ftp"):
        raise DownloadError(f"unsupported URL scheme {scheme!r} (http, https or ftp)")
    downloader = pooch.HTTPDownloader(timeout=timeout, progressbar=sys.stderr.isatty()) \
        if scheme != "ftp" else pooch.FTPDownloader(timeout=timeout)
    logging.getLogger("pooch").setLevel(logging.WARNING)  # we say what is downloaded
    try:
        return Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}" if sha256 else None,
                                   fname=fname, path=tmp, downloader=downloader))
    except ValueError as e:  # pooch: the hash of the download does not match
        raise DataError(f"{url}: {e} Nothing was kept.") from e
    except (requests.exceptions.RequestException, OSError) as e:
        raise DownloadError(_reason(e)) from e


def _reason(e: BaseException) -> str:
    """The innermost cause of a requests error, short ("Connection refused")."""
    while e.__context__ is not None and not isinstance(e.__context__, (KeyboardInterrupt,)):
        e = e.__context__
    text = str(e)
    return text.split("] ", 1)[-1][:200] if text else type(e).__name__


def _extract(archive: Path, url: str, tmp: Path) -> dict[str, Path]:
    # Only the split files are read, through extractfile: no member path ever touches the disk.
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        files = {}
        for split in SPLITS:
            matches = ([m for m in members if Path(m.name).name == f"{split}.txt"] or
                       [m for m in members if Path(m.name).name.endswith((f"_{split}.txt", f"-{split}.txt"))])
            if len(matches) > 1:
                raise DataError(f"{url}: several {split} files in the archive: "
                                f"{', '.join(m.name for m in matches)}")
            if not matches:
                if split == "train":
                    names = ", ".join(m.name for m in members[:20])
                    raise DataError(f"{url}: no train.txt in the archive (members: {names})")
                continue
            files[split] = tmp / f"{split}.txt"
            with tar.extractfile(matches[0]) as src, open(files[split], "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---- command line ------------------------------------------------------------------------------

def _list() -> str:
    rows = [f"{'name':<11}{'entities':>10}{'relations':>10}{'train':>11}{'valid':>8}{'test':>8}  where"]
    for info in _INFOS:
        where = find(info.folder)
        rows.append(f"{info.folder:<11}{info.num_entities:>10,}{info.num_relations:>10,}"
                    + "".join(f"{n:>{w},}" for n, w in zip(info.num_triples, (11, 8, 8)))
                    + f"  {where or 'not downloaded (fetch ' + info.folder + ')'}")
    rows.append(f"fetch puts datasets into {data_home()} ($JAXPS_DATA, else the user cache)")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m train.kge.datasets",
        description="The registry of named KGE datasets (--data NAME of train.kge): list them, "
                    "fetch one (checked against the registry's sha256 sums), print its folder.")
    sub = p.add_subparsers(dest="command", required=True, metavar="list|fetch|path")
    sub.add_parser("list", help="every registered dataset: counts, and where it is if downloaded")
    f = sub.add_parser("fetch", help="download NAME into $JAXPS_DATA or the user cache",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("name", help="a registered name, e.g. umls, fb15k-237")
    f.add_argument("--dest", default=None, help="parent folder instead of the data home")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds to connect and between "
                   "received bytes")
    f.add_argument("--force", action="store_true", help="download again even if present")
    q = sub.add_parser("path", help="print the folder NAME resolves to (exit 1 if not downloaded)")
    q.add_argument("name")
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            print(_list())
        elif args.command == "fetch":
            print(fetch(args.name, args.dest, timeout=args.timeout, force=args.force))
        else:
            print(resolve(args.name))
    except (DataError, DownloadError) as e:
        p.exit(1, f"python -m train.kge.datasets {args.command}: error: {e}\n")


if __name__ == "__main__":
    main()
