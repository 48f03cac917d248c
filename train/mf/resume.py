"""What an MF checkpoint must agree on before a run resumes from it, and where in an epoch a
resumed run starts (the checks themselves are train/common/resume.py's).

Rows are ``[factors | bias | optimizer state]``: ``dim`` and ``optimizer`` fix what each
number means. The dataset fingerprint hashes the user and item ids in id order (ids define
the rows), the split sizes and the training cells themselves (``--seed`` or ``--split``
changes which cells are trained on without changing the ids).

Where a resumed run starts inside an epoch (``meta["position"]``, ``meta["sub_epoch"]``):
- shuffled: at the data position (entries of the epoch's permutation consumed), on any rank
  count and batch size (``Schedule.epoch(epoch, start)``).
- dsgd: after the sub-epochs already trained, when the rank count is the checkpoint's; on
  another rank count the blocks are other cells, so the interrupted epoch is trained again
  from its start (said in a note).
- columns: a checkpoint is only taken at an epoch's end.
A different --schedule than the checkpoint's restarts a partly trained epoch as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import jaxps
from train.common import resume as common
from train.common.resume import ResumeError  # noqa: F401 - raised by the functions below
from train.mf.config import MfConfig
from train.mf.data import RatingsDataset

MUST_MATCH = ("dim", "optimizer")
# Settings of how a run is driven, not of what it trains: never reported.
_DRIVING = ("epochs", "resume", "out", "progress", "checkpoint_every", "keep_checkpoints",
            "peer_timeout", "eval_every")


def dataset_fingerprint(dataset: RatingsDataset) -> dict:
    """Sizes, and a sha256 of the ids in id order and of the training cells."""
    h = hashlib.sha256()
    for ids in (dataset.user_ids, dataset.item_ids):
        h.update("\n".join(map(str, ids.tolist())).encode("utf-8"))
        h.update(b"\0")
    train = dataset.splits["train"]
    for column in train:
        h.update(memoryview(column).cast("B"))
    return {"users": dataset.num_users, "items": dataset.num_items,
            "splits": {s: len(r) for s, r in dataset.splits.items()},
            "sha256": h.hexdigest()[:32]}


def checkpoint_root(config: MfConfig) -> Path:
    return Path(config.out) / "checkpoints"


def find_checkpoint(config: MfConfig) -> Path | None:
    """The checkpoint ``--resume`` names (see ``train.common.resume.find_checkpoint``)."""
    return common.find_checkpoint(checkpoint_root(config), config.resume, config.out)


def check_compatible(manifest: dict, config: MfConfig, fingerprint: dict, path: Path) -> list[str]:
    """Raise ResumeError listing what differs in MUST_MATCH and the dataset; returns notes
    on the other differences, and checks that ``--epochs`` is not below the checkpoint's."""
    return common.check_compatible(manifest, dataclasses.asdict(config), fingerprint, path,
                                   must_match=MUST_MATCH, driving=_DRIVING,
                                   entrypoint="train.mf", epochs=config.epochs,
                                   names="user/item ids and training cells")


def start_within(meta: dict, config: MfConfig, ranks: int) -> tuple[int, int, str]:
    """(position, sub_epoch, note) where the epoch after the checkpoint's starts here."""
    position, sub = int(meta.get("position", 0)), int(meta.get("sub_epoch", 0))
    if not (position or sub):
        return 0, 0, ""
    saved = meta["config"]
    if saved.get("schedule") != config.schedule or (sub and meta.get("ranks") != ranks):
        return 0, 0, (f"the checkpoint is inside epoch {meta['epoch'] + 1} ({saved['schedule']} "
                      f"on {meta.get('ranks')} rank(s)); with {config.schedule} on {ranks} "
                      f"rank(s) that epoch is trained again from its start")
    return position, sub, ""


def describe(manifest: dict, path: Path) -> str:
    """"resumed from epoch N (step S, written by R ranks with TECHNIQUE)"."""
    meta = manifest["meta"]
    nxt = meta["epoch"] + 1
    within = (f"+ {meta['position']} ratings of epoch {nxt}" if meta.get("position") else
              f"+ {meta['sub_epoch']} dsgd sub-epoch(s) of epoch {nxt}"
              if meta.get("sub_epoch") else "")
    return common.describe(manifest, path, within)


def save(ps, config: MfConfig, comm, *, epoch: int, position: int, sub_epoch: int,
         num_train: int, history: list, seconds: float, train_seconds: float,
         fingerprint: dict) -> Path:
    """Collective: a sharded checkpoint in out/checkpoints (``jaxps.save_checkpoint``).

    ``epoch``: epochs completed; ``position`` / ``sub_epoch``: how much of epoch + 1 is
    trained (0 at an epoch boundary). The step (the label that orders checkpoints) counts
    training ratings: ``epoch * num_train`` plus the part of epoch + 1.
    """
    size = comm.Get_size()
    meta = {"entrypoint": "train.mf", "epoch": epoch, "position": position,
            "sub_epoch": sub_epoch, "ranks": size, "history": history, "seconds": seconds,
            "train_seconds": train_seconds, "config": dataclasses.asdict(config),
            "fingerprint": fingerprint,
            "rng": "numpy default_rng([seed, epoch, 3]) orders the epoch (schedules.py); the "
                   "model draws no random numbers"}
    step = epoch * num_train + (position or sub_epoch * num_train // size)
    return jaxps.save_checkpoint(ps, checkpoint_root(config), step=step, meta=meta,
                                 keep=config.keep_checkpoints, comm=comm)
