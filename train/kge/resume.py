"""What a KGE checkpoint must agree on before a run resumes from it, and where it comes from.

A checkpoint stores rows of a fixed width, so shapes alone cannot tell a ComplEx model from a
DistMult one of the same width (both read the numbers, differently). The manifest therefore
keeps the run's whole config and a fingerprint of the dataset (a hash of the entity and
relation names in id order and the split sizes); `check_compatible` compares them and lists
every field that differs. Fields in `MUST_MATCH` make the rows mean something else and are
an error; other differences (learning rate, batch size, technique, rank count) are allowed
and reported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jaxps
from train.kge.config import KgeConfig
from train.kge.data import KgeDataset

MUST_MATCH = ("model", "dim", "optimizer", "reciprocal", "loss", "reg_type")
# Settings of how a run is driven, not of what it trains: never reported.
_DRIVING = ("epochs", "resume", "out", "progress", "checkpoint_every", "keep_checkpoints",
            "peer_timeout", "eval_every", "max_eval", "eval_batch_size")


class ResumeError(ValueError):
    """The run cannot resume as asked; the message lists what differs or what is missing."""


def dataset_fingerprint(dataset: KgeDataset) -> dict:
    """sha256 of the names in id order (ids define the rows) and the split sizes."""
    h = hashlib.sha256()
    for names in (dataset.entity_ids, dataset.relation_ids):
        h.update("\n".join(names).encode("utf-8"))
        h.update(b"\0")
    return {"sha256": h.hexdigest()[:32], "entities": dataset.num_entities,
            "relations": dataset.num_relations,
            "splits": {s: len(t) for s, t in dataset.splits.items()}}


def checkpoint_root(config: KgeConfig) -> Path:
    return Path(config.out) / "checkpoints"


def find_checkpoint(config: KgeConfig) -> Path | None:
    """The checkpoint ``--resume`` names: None to start afresh (``auto`` without one).

    Raises ResumeError for ``--resume``/``latest`` without a checkpoint, a PATH that is not
    one, or a run without --resume into an --out that already holds checkpoints.
    """
    root = checkpoint_root(config)
    if not config.resume:
        if config.out and (found := jaxps.list_checkpoints(root)):
            # Starting afresh here would interleave two runs' checkpoints (keep-K could
            # then delete the new ones, and a later --resume pick the old run's).
            raise ResumeError(f"--out {config.out} holds checkpoints of an earlier run "
                              f"(newest {found[-1]}); pass --resume to continue it, or "
                              f"another --out (or delete {root}) to start afresh")
        return None
    if config.resume in ("latest", "auto"):
        found = jaxps.list_checkpoints(root)
        if found:
            return found[-1]
        if config.resume == "auto":
            return None
        raise ResumeError(f"--resume: no checkpoint in {root} (none written yet?); pass "
                          "--resume auto to start afresh when there is none, or drop --resume")
    path = Path(config.resume)
    if not (path / "manifest.json").is_file():
        raise ResumeError(f"--resume {path}: not a checkpoint folder (no manifest.json); "
                          f"checkpoints of this --out: "
                          f"{', '.join(map(str, jaxps.list_checkpoints(root))) or 'none'}")
    return path


def check_compatible(manifest: dict, config: KgeConfig, fingerprint: dict, path: Path) -> list[str]:
    """Raise ResumeError listing each MUST_MATCH field / dataset property that differs.

    Returns notes on the other differing fields (``"lr: 0.1 -> 0.05"``) and checks that
    ``--epochs`` is not below the checkpoint's epoch.
    """
    meta = manifest.get("meta", {})
    saved = meta.get("config")
    if not isinstance(saved, dict) or "fingerprint" not in meta:
        raise ResumeError(f"{path}: not a train.kge checkpoint (no config in its manifest)")
    now = config.__dict__
    errors = [f"--{k.replace('_', '-')}: checkpoint {saved.get(k)!r}, this run {now[k]!r}"
              for k in MUST_MATCH if saved.get(k) != now[k]]
    old_fp = meta["fingerprint"]
    for k in ("entities", "relations", "splits", "sha256"):
        if old_fp.get(k) != fingerprint[k]:
            what = "entity/relation names" if k == "sha256" else k
            errors.append(f"dataset {what}: checkpoint {old_fp.get(k)!r}, this run "
                          f"{fingerprint[k]!r}")
    if errors:
        raise ResumeError(f"cannot resume from {path}: it was trained with different "
                          "settings (" + "; ".join(errors) + "); pass the same options, or a "
                          "new --out to start afresh")
    if config.epochs < meta["epoch"]:
        raise ResumeError(f"--epochs {config.epochs} is below the checkpoint's epoch "
                          f"{meta['epoch']} ({path}); pass --epochs {meta['epoch']} or more "
                          "(the total, counting the epochs already trained)")
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now
            if k not in MUST_MATCH and k not in _DRIVING and saved.get(k) != now[k]]


def describe(manifest: dict, path: Path) -> str:
    """"resumed from epoch N (step S, written by R ranks with TECHNIQUE)"."""
    meta = manifest["meta"]
    at = f"epoch {meta['epoch']}"
    if meta.get("position"):
        at += f" + {meta['position']} triples of epoch {meta['epoch'] + 1}"
    return (f"resumed from {at} (step {manifest['step']}, written by {manifest['ranks']} "
            f"rank(s) with {manifest['technique']}): {path}")
