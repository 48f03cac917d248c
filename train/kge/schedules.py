"""Learning-rate schedules of a KGE run: the factor on ``--lr`` of every batch.

The row optimizers' state lives in the PS rows, so the learning rate cannot be optimizer
state (it would be per row, and stale in rows a batch does not touch). Instead the jitted
step takes a factor on its parameter updates as an argument (``SparseTrainer.train_epoch``'s
``lr_scale``): a new value never recompiles, and for optax's adagrad and adam, whose update
ends in ``scale_by_learning_rate``, a factor f on the update is exactly the learning rate
f * lr.

- none: 1.
- plateau: PyTorch's ReduceLROnPlateau in mode max on the valid MRR (what LibKGE's best
  configs use): after more than ``--lr-patience`` validations in a row without an MRR above
  best * (1 + 1e-4), the factor is multiplied by ``--lr-factor``.
- cosine: ``optax.cosine_decay_schedule`` from 1 to 0 over all batches of the run.
- warmup_cosine: ``optax.warmup_cosine_decay_schedule``: linear from 0 over
  ``--warmup-epochs``, then cosine to 0.

The schedule's state is a function of the run's metrics history, so a resumed run rebuilds
it (``replay``) instead of storing it in the checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import optax

_THRESHOLD = 1e-4  # ReduceLROnPlateau's default relative threshold, as LibKGE's configs


class LrSchedule:
    """The factor on ``config.lr`` for each batch of a run.

    Args:
      config: the KgeConfig (lr_schedule, lr_patience, lr_factor, warmup_epochs, epochs, lr).
      batches_per_epoch: batches of one epoch on the rank with the most (>= 1).
    """

    def __init__(self, config, batches_per_epoch: int):
        self.kind = config.lr_schedule
        self.base = config.lr
        self.patience, self.drop = config.lr_patience, config.lr_factor
        self.per_epoch = max(1, batches_per_epoch)
        self.factor, self.best, self.bad = 1.0, -math.inf, 0
        total = config.epochs * self.per_epoch
        self._table = None
        if self.kind == "cosine":
            fn = optax.cosine_decay_schedule(1.0, decay_steps=total)
        elif self.kind == "warmup_cosine":
            warmup = min(config.warmup_epochs * self.per_epoch, total - 1)
            fn = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=max(warmup, 0),
                                                    decay_steps=total, end_value=0.0)
        else:
            fn = None
        if fn is not None:
            # One vectorized evaluation for the whole run: the hot path is a lookup.
            self._table = np.asarray(fn(np.arange(total + 1)), np.float64)

    def scale(self, epoch: int, first_batch: int = 0):
        """``batch index in epoch -> factor`` for epoch ``epoch`` (1-based); ``first_batch``:
        batches of this epoch already trained (a run resumed mid-epoch)."""
        if self._table is None:
            factor = self.factor
            return lambda i: factor
        offset = (epoch - 1) * self.per_epoch + first_batch
        table = self._table
        return lambda i: float(table[min(offset + i, len(table) - 1)])

    def lr(self, epoch: int) -> float:
        """The learning rate at the first batch of ``epoch``."""
        return self.base * self.scale(epoch)(0)

    def observe(self, mrr: float) -> bool:
        """A validation's MRR (plateau only); returns whether the learning rate dropped."""
        if self.kind != "plateau":
            return False
        if mrr > self.best * (1 + _THRESHOLD):  # -inf at first: any MRR is better
            self.best, self.bad = mrr, 0
            return False
        self.bad += 1
        if self.bad > self.patience:
            self.factor *= self.drop
            self.bad = 0
            return True
        return False

    def replay(self, history: list[dict]) -> None:
        """Rebuild the plateau state from a resumed run's metrics history."""
        for record in history:
            if record.get("valid"):
                self.observe(record["valid"]["mrr"])
