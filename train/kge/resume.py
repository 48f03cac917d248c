"""What a KGE checkpoint must agree on before a run resumes from it (the checks themselves are
train/common/resume.py's).

``MUST_MATCH`` are the fields that change what a row means (a ComplEx row and a DistMult row
of the same width read the numbers differently); the dataset fingerprint hashes the entity and
relation names in id order (ids define the rows) and the split sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import jaxps
from train.common import resume as common
from train.common.resume import ResumeError  # noqa: F401 - raised by the functions below
from train.kge.config import KgeConfig
from train.kge.data import KgeDataset
from train.kge.early import best_root

MUST_MATCH = ("model", "dim", "optimizer", "reciprocal", "loss", "reg_type")
# Settings of how a run is driven, not of what it trains: never reported.
_DRIVING = ("epochs", "resume", "out", "progress", "checkpoint_every", "keep_checkpoints",
            "download", "peer_timeout", "eval_every", "max_eval", "eval_batch_size",
            "filter", "init_embeddings", "patience", "min_delta", "config", "preset")


def dataset_fingerprint(dataset: KgeDataset) -> dict:
    """sha256 of the names in id order (ids define the rows) and the split sizes."""
    h = hashlib.sha256()
    for names in (dataset.entity_ids, dataset.relation_ids):
        h.update("\n".join(names).encode("utf-8"))
        h.update(b"\0")
    return {"entities": dataset.num_entities, "relations": dataset.num_relations,
            "splits": {s: len(t) for s, t in dataset.splits.items()},
            "sha256": h.hexdigest()[:32]}


def checkpoint_root(config: KgeConfig) -> Path:
    return Path(config.out) / "checkpoints"


def find_checkpoint(config: KgeConfig) -> Path | None:
    """The checkpoint ``--resume`` names (see ``train.common.resume.find_checkpoint``).

    Raises ResumeError too when the run would start afresh in an --out whose ``best/`` holds
    an earlier run's best model: the new run's best would share that folder (keep=1 there
    deletes the lower epoch, possibly the new run's own best, and the run then fails after
    training when it restores it).
    """
    path = common.find_checkpoint(checkpoint_root(config), config.resume, config.out)
    if path is None and config.out and (earlier := jaxps.list_checkpoints(best_root(config.out))):
        raise ResumeError(f"--out {config.out} holds the best model of an earlier run "
                          f"({earlier[-1]}) and no checkpoint to continue that run from; pass "
                          f"another --out, or delete {best_root(config.out)} to start afresh")
    return path


def check_compatible(manifest: dict, config: KgeConfig, fingerprint: dict, path: Path) -> list[str]:
    """Raise ResumeError listing what differs in MUST_MATCH and the dataset; returns notes
    on the other differences, and checks that ``--epochs`` is not below the checkpoint's."""
    return common.check_compatible(manifest, dataclasses.asdict(config), fingerprint, path,
                                   must_match=MUST_MATCH, driving=_DRIVING,
                                   entrypoint="train.kge", epochs=config.epochs,
                                   names="entity/relation names")


def describe(manifest: dict, path: Path) -> str:
    """"resumed from epoch N (step S, written by R ranks with TECHNIQUE)"."""
    meta = manifest["meta"]
    within = (f"+ {meta['position']} triples of epoch {meta['epoch'] + 1}"
              if meta.get("position") else "")
    return common.describe(manifest, path, within)
