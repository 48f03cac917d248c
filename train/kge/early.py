"""Early stopping on the valid MRR, and the best model of a run kept, tested and exported.

Every validation during training is compared with the best so far. A better MRR (any gain)
makes that epoch the best: with ``--out`` its model is written as a sharded checkpoint to
``out/best`` (``jaxps.save_checkpoint`` with keep=1, in its own folder, so that
``--keep-checkpoints`` never deletes it and ``--resume`` never picks it). With
``--patience N``, training stops after N validations in a row whose MRR is not above
best + ``--min-delta``. At the end, when the last epoch is not the best, the best checkpoint
is loaded back into the PS, and it is that model which is evaluated on test and exported;
summary.json says which epoch it is and why training stopped.

The tracker's state is a function of the metrics history, so a resumed run rebuilds it
(``replay``); the best checkpoint on disk is found again by its epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import jaxps


def best_root(out: Path) -> Path:
    return Path(out) / "best"


class BestTracker:
    """Best valid MRR so far, its epoch, and the early-stopping count.

    Args:
      patience: validations without improvement before stopping (0: never).
      min_delta: the least gain that resets the count.
      out: the run's --out folder (None: the best model cannot be kept).
    """

    def __init__(self, patience: int, min_delta: float, out: Path | None):
        self.patience, self.min_delta, self.out = patience, min_delta, out
        self.best_mrr, self.best_epoch, self.bad = -math.inf, None, 0
        self.best_path: Path | None = None
        self.current_epoch, self.restored = None, False

    def observe(self, epoch: int, mrr: float) -> bool:
        """One validation; returns whether ``epoch`` is the new best."""
        if mrr > self.best_mrr + self.min_delta:
            self.bad = 0
        else:
            self.bad += 1
        if mrr > self.best_mrr:
            self.best_mrr, self.best_epoch = mrr, epoch
            return True
        return False

    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad >= self.patience

    def reason(self) -> str:
        return (f"early stopping: {self.bad} validations without a valid MRR above "
                f"{self.best_mrr:.4f} + {self.min_delta:g} (--patience {self.patience})")

    def replay(self, history: list[dict]) -> None:
        """Rebuild the state from a resumed run's history; the best checkpoint, if its
        epoch's is on disk, is used again."""
        for record in history:
            if record.get("valid"):
                self.observe(record["epoch"], record["valid"]["mrr"])
        if self.best_epoch is not None and self.out is not None:
            path = best_root(self.out) / f"step-{self.best_epoch:012d}"
            self.best_path = path if (path / "manifest.json").is_file() else None

    def save(self, ps, epoch: int, meta: dict, comm) -> None:
        """Collective: the model of ``epoch`` (the new best) to out/best (no-op without --out)."""
        if self.out is None:
            return
        self.best_path = jaxps.save_checkpoint(ps, best_root(self.out), step=epoch,
                                               meta=meta | {"best_valid_mrr": self.best_mrr},
                                               keep=1, comm=comm)

    def restore_best(self, ps, comm) -> str | None:
        """Collective, at the end: load the best epoch's model when it is not the current one.
        Returns what was done, for the console (None: the current model is the best)."""
        self.restored = False
        if self.best_epoch is None or self.best_epoch == self.current_epoch:
            return None
        if self.best_path is None:
            return (f"best valid MRR {self.best_mrr:.4f} was at epoch {self.best_epoch}, but "
                    "without --out its model was not kept: the last epoch's is tested")
        jaxps.load_checkpoint(ps, self.best_path, comm=comm)
        self.restored = True
        return (f"best valid MRR {self.best_mrr:.4f} at epoch {self.best_epoch}: its model "
                f"(restored from {self.best_path}) is tested and exported")


def final_metrics(tracker: BestTracker, ps, evaluate_split, valid, test, history: list,
                  meta, comm) -> tuple[dict, str | None]:
    """Collective: the final valid and test metrics, of the best epoch's model.

    ``evaluate_split``: ``triples -> metrics``; ``valid``/``test``: triples or None. The last
    epoch's valid MRR counts for the best unless its validation ran in the loop already. A new
    best is then saved too, with ``meta(epoch, history)`` (the history ending in the last
    epoch with its valid metrics), when out/best holds an earlier one, so that it holds the
    best model; when no validation ran in the loop, out/best stays empty (the exports hold
    that model): writing it here would come before the results are printed and needs a
    folder shared by all ranks (tests/test_bad_input.py: a full disk, two hosts).
    Returns ({"valid": ..., "test": ...}, the console note of ``restore_best``).
    """
    last = history[-1]["epoch"] if history else 0
    tracker.current_epoch = last
    final, note = {}, None
    if valid is not None:
        final["valid"] = evaluate_split(valid)
        if not (history and history[-1].get("valid")):
            if tracker.observe(last, final["valid"]["mrr"]) and tracker.best_path is not None:
                tracker.save(ps, last, meta(last, history[:-1] + [
                    history[-1] | {"valid": final["valid"]}]), comm)
        note = tracker.restore_best(ps, comm)
        if tracker.restored:
            final["valid"] = evaluate_split(valid)
    if test is not None:
        final["test"] = evaluate_split(test)
    return final, note
