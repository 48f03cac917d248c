"""Which checkpoint a run resumes from, and whether it may: the checks every entrypoint makes.

A checkpoint stores rows of a fixed width, so shapes alone cannot tell two models of the same
width apart (a ComplEx row read as DistMult, MF factors of another ratings file). The
manifest's ``meta`` therefore keeps the run's whole config and a fingerprint of its dataset
(the entrypoint's choice: names in id order and split sizes); `check_compatible` compares them
and lists every field that differs. Fields in ``must_match`` make the rows mean something else
and are an error; the other differences (learning rate, batch size, technique, rank count) are
allowed and reported as notes.
"""

from __future__ import annotations

from pathlib import Path

import jaxps


class ResumeError(ValueError):
    """The run cannot resume as asked; the message lists what differs or what is missing."""


def find_checkpoint(root: Path, resume: str, out: str) -> Path | None:
    """The checkpoint that ``--resume`` (``""``, ``latest``, ``auto`` or a PATH) names in
    ``root`` (``out``/checkpoints): None to start afresh.

    Raises ResumeError for ``--resume``/``latest`` without a checkpoint, a PATH that is not
    one, or a run without --resume into an --out that already holds checkpoints.
    """
    if not resume:
        if out and (found := jaxps.list_checkpoints(root)):
            # Starting afresh here would interleave two runs' checkpoints (keep-K could
            # then delete the new ones, and a later --resume pick the old run's).
            raise ResumeError(f"--out {out} holds checkpoints of an earlier run "
                              f"(newest {found[-1]}); pass --resume to continue it, or "
                              f"another --out (or delete {root}) to start afresh")
        return None
    if resume in ("latest", "auto"):
        found = jaxps.list_checkpoints(root)
        if found:
            return found[-1]
        if resume == "auto":
            return None
        raise ResumeError(f"--resume: no checkpoint in {root} (none written yet?); pass "
                          "--resume auto to start afresh when there is none, or drop --resume")
    path = Path(resume)
    if not (path / "manifest.json").is_file():
        raise ResumeError(f"--resume {path}: not a checkpoint folder (no manifest.json); "
                          f"checkpoints of this --out: "
                          f"{', '.join(map(str, jaxps.list_checkpoints(root))) or 'none'}")
    return path


def check_compatible(manifest: dict, config: dict, fingerprint: dict, path: Path, *,
                     must_match: tuple, driving: tuple, entrypoint: str,
                     epochs: int, names: str = "names") -> list[str]:
    """Raise ResumeError listing each ``must_match`` field / fingerprint entry that differs.

    Args:
      config: this run's config as a dict (``dataclasses.asdict``).
      fingerprint: this run's dataset fingerprint; every key is compared (``sha256``: "names").
      driving: fields of how a run is driven, not of what it trains: never reported.
      entrypoint: for the message on a foreign checkpoint ("train.mf").
      epochs: this run's ``--epochs`` (the total), checked against the checkpoint's epoch.
      names: what the fingerprint's ``sha256`` hashes, for the message.

    Returns notes on the other differing fields (``"lr: 0.1 -> 0.05"``).
    """
    meta = manifest.get("meta", {})
    saved = meta.get("config")
    if not isinstance(saved, dict) or "fingerprint" not in meta or \
            meta.get("entrypoint", entrypoint) != entrypoint:
        raise ResumeError(f"{path}: not a {entrypoint} checkpoint (no {entrypoint} config in "
                          "its manifest)")
    errors = [f"--{k.replace('_', '-')}: checkpoint {saved.get(k)!r}, this run {config[k]!r}"
              for k in must_match if saved.get(k) != config[k]]
    old_fp = meta["fingerprint"]
    for k, now in fingerprint.items():
        if old_fp.get(k) != now:
            what = names if k == "sha256" else k
            errors.append(f"dataset {what}: checkpoint {old_fp.get(k)!r}, this run {now!r}")
    if errors:
        raise ResumeError(f"cannot resume from {path}: it was trained with different "
                          "settings (" + "; ".join(errors) + "); pass the same options, or a "
                          "new --out to start afresh")
    if not isinstance(meta.get("history"), list):
        raise ResumeError(f"{path}: its manifest has no training history, so a run cannot "
                          "continue from it (earlier versions of train.kge wrote out/best "
                          "without one); resume from a checkpoint in the run's checkpoints/ "
                          "folder instead")
    if epochs < meta["epoch"]:
        raise ResumeError(f"--epochs {epochs} is below the checkpoint's epoch "
                          f"{meta['epoch']} ({path}); pass --epochs {meta['epoch']} or more "
                          "(the total, counting the epochs already trained)")
    return [f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in config
            if k not in must_match and k not in driving and saved.get(k) != config[k]]


def describe(manifest: dict, path: Path, within: str = "") -> str:
    """"resumed from epoch N (step S, written by R rank(s) with TECHNIQUE): PATH";
    ``within``: where inside epoch N + 1, e.g. "+ 4928 triples of epoch 6" ("": none)."""
    meta = manifest["meta"]
    at = f"epoch {meta['epoch']}" + (f" {within}" if within else "")
    return (f"resumed from {at} (step {manifest['step']}, written by {manifest['ranks']} "
            f"rank(s) with {manifest['technique']}): {path}")


def restore(ps, path: Path, notes: list[str], description, *, comm, say) -> tuple[dict, list]:
    """Collective: load the checkpoint at ``path`` into ``ps`` and say so (the line from
    ``description(manifest, path)``, then each note on config fields that differ).
    Returns (its meta, the metrics history up to its epoch)."""
    manifest = jaxps.load_checkpoint(ps, path, comm=comm)
    meta = manifest["meta"]
    say(description(manifest, path), flush=True)
    for note in notes:
        say(f"note: differs from the checkpoint: {note}", flush=True)
    return meta, [h for h in meta["history"] if h["epoch"] <= meta["epoch"]]
