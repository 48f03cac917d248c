"""Registry of standard link-prediction benchmarks: where to get them, what they should contain.

`resolve` turns a registry name or a folder into a dataset folder for `data.load_dataset`;
`download` fetches a registered dataset into ``<dest>/<lowercase name>/{train,valid,test}.txt``.

URLs: ``urls[0]`` is the primary source (the ConvE repository for FB15k-237, WN18RR, YAGO3-10,
Kinship, Nations, UMLS, as in ../shared/data; the CoDEx repository; the Wikidata5M project page's
link), the rest are mirrors tried in order (LibKGE's ``data/download_all.sh`` mirror at the
University of Mannheim, Zenodo). A URL ending in "/" is a folder of raw ``train.txt`` /
``valid.txt`` / ``test.txt``; anything else is a tar archive whose split files are found by
base name (``train.txt``, or ``*_train.txt`` / ``*-train.txt`` as in Wikidata5M's release).

Checksums: no source publishes a checksum of its archive, so `DatasetInfo.sha256` is None
(unknown) for all entries; it is checked whenever it is set. Instead, `file_sha256` holds the
sha256 of the extracted split files, measured on the byte-for-byte copies in ../shared/data;
they are checked for downloads from ``urls[0]`` (mirrors repackage the files, and are unverified).

Counts are of the raw files, all splits together (so FB15k-237 has 14,541 entities although
28 test triples use an entity absent from train); see each entry's note for the source.
"""

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

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


def search_path() -> list[Path]:
    """Folders searched for ``<lowercase name>/`` by `resolve`, in order."""
    roots = [Path(p) for p in os.environ.get("JAXPS_DATA", "").split(os.pathsep) if p]
    repo = Path(__file__).resolve().parents[2]
    return roots + [repo.parent / "shared" / "data", user_cache_dir() / "datasets"]


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A dataset folder: an existing folder as is, else a registry name looked up in `search_path`.

    Raises:
      DataError: not a folder and not a registered name, or registered but found nowhere
        (the message lists where it looked and how to download it).
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    info = get(str(name_or_path))
    tried = [root / info.folder for root in search_path()]
    for folder in tried:
        if (folder / "train.txt").is_file():
            return folder
    raise DataError(f"dataset {info.name} not found in {', '.join(map(str, tried))}; fetch it with "
                    f"train.kge.datasets.download({info.name!r}) (into {user_cache_dir() / 'datasets'}), "
                    "set JAXPS_DATA to a folder holding it, or pass --data FOLDER")


def download(name: str | DatasetInfo, dest: str | os.PathLike | None = None, *,
             timeout: float = 60.0) -> Path:
    """Fetch a dataset into ``<dest>/<lowercase name>/`` and return that folder.

    Tries `DatasetInfo.urls` in order; checks `sha256` / `file_sha256` (when known) for the
    primary URL. Files appear under their final names only once complete and verified.

    Args:
      name: a registry name, or a `DatasetInfo` (e.g. for a private mirror).
      dest: parent folder; default ``~/.cache/jaxps/datasets`` (searched by `resolve`).
      timeout: seconds per network operation (connect, each read).

    Raises:
      DownloadError: no URL could be fetched (offline...): download it by hand instead.
      DataError: a checksum mismatch, or an archive without a train file.
    """
    info = name if isinstance(name, DatasetInfo) else get(name)
    folder = Path(dest if dest is not None else user_cache_dir() / "datasets") / info.folder
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in info.urls:
        try:
            parts = _fetch_splits(info, url, folder, timeout)
        except (urllib.error.URLError, OSError, tarfile.TarError) as e:  # HTTPError: a URLError
            failures.append(f"{url} ({getattr(e, 'reason', None) or e})")
            for part in folder.glob(".*.part"):
                part.unlink()
            continue
        for split, part in parts.items():
            os.replace(part, folder / f"{split}.txt")
        return folder
    raise DownloadError(f"could not download {info.name} from {'; nor from '.join(failures)}; "
                        f"download it by hand (see the URL) into {folder} and pass --data FOLDER")


def _fetch_splits(info: DatasetInfo, url: str, folder: Path, timeout: float) -> dict[str, Path]:
    """Download `url` into ``folder/.<split>.txt.part`` files, verified; return them by split."""
    primary = url == info.urls[0]
    if url.endswith("/"):
        parts = {}
        for split in SPLITS:
            parts[split] = folder / f".{split}.txt.part"
            _fetch(f"{url}{split}.txt", parts[split], timeout)
    else:
        archive = folder / ".archive.part"
        digest = _fetch(url, archive, timeout)
        if primary and info.sha256 and digest != info.sha256:
            raise DataError(f"{url}: sha256 {digest}, expected {info.sha256}: a changed or "
                            f"corrupted archive; it is left in {archive}")
        parts = _extract(archive, url, folder)
        archive.unlink()
    if primary and info.file_sha256:
        for split, part in parts.items():
            expected = info.file_sha256.get(split)
            if expected and (got := _sha256(part)) != expected:
                raise DataError(f"{url}: {split}.txt has sha256 {got}, expected {expected}; the "
                                f"source changed or the download is corrupted (see {part})")
    return parts


def _fetch(url: str, target: Path, timeout: float) -> str:
    """Stream `url` into `target`; return its sha256."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _extract(archive: Path, url: str, folder: Path) -> dict[str, Path]:
    # Only the split files are read, through extractfile: no member path ever touches the disk.
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        parts = {}
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
            parts[split] = folder / f".{split}.txt.part"
            with tar.extractfile(matches[0]) as src, open(parts[split], "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(
        prog="python -m train.kge.datasets",
        description="The registry of named KGE datasets (`--data NAME` of train.kge); "
                    "run without arguments to list them.").parse_args()
    for name in sorted(REGISTRY):
        print(name)
