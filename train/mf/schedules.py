"""The three MF schedules: which ratings a rank trains on, in which order, and what to localize.

An epoch is a list of sub-epochs (``SubEpoch``); every rank has the same number, and the
run loop (``train/mf/train.py``) gives each its own ``SparseTrainer.train_epoch`` call, so
work that must happen between two sub-epochs (a barrier, ``ps.localize``) runs in the
training thread at exactly that point, never in the trainer's batch producer that reads
ahead.

- ``shuffled``: one sub-epoch; all training cells in a random order (the same permutation
  on every rank), rank r takes every size-th one. Intents one batch ahead are the only
  locality help.
- ``columns`` (latency hiding, Lapse): users are partitioned over the ranks (rank r owns
  the users u with u % size == r, which is their home under every technique, so user rows
  are always local); each rank visits its cells column by column, in a per-epoch random
  column order rotated by r * cols / size so that ranks work on different columns at any
  time, and intents for the next batches' columns let the PS move them in time.
- ``dsgd`` (parameter blocking, Gemulla et al. KDD 2011): users as for ``columns``, items
  dealt into ``size`` blocks by decreasing frequency (balanced load); in sub-epoch s rank r
  trains the cells of block (r, (r + s) mod size), after a barrier and ``localize`` of that
  item block, so with relocation every access is local without any intent.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from jaxps import Batch
from train.mf.data import Ratings


class SubEpoch(NamedTuple):
    """One stretch of training between two synchronization points.

    Attributes:
      cells: int64 [n]: indices into the training ratings, in training order (this rank).
      localize: item keys to move to this rank before it starts (after a barrier), or None.
    """

    cells: np.ndarray
    localize: np.ndarray | None


class Schedule:
    """The per-rank plan of a schedule over fixed training ratings. Cheap to keep per run.

    Args:
      train: the training ratings.
      num_users, num_items: table sizes.
      name: "shuffled", "columns" or "dsgd".
      rank, size: this rank and the number of ranks.
      seed: the run's seed (epoch e uses the seed pair (seed, e)).
    """

    def __init__(self, train: Ratings, num_users: int, num_items: int, name: str, *,
                 rank: int, size: int, seed: int):
        self.train, self.name, self.rank, self.size, self.seed = train, name, rank, size, seed
        self.num_users, self.num_items = num_users, num_items
        if name in ("columns", "dsgd"):
            self.mine = np.flatnonzero(train.users % size == rank)
        if name == "dsgd":
            counts = np.bincount(train.items, minlength=num_items)
            by_freq = np.argsort(-counts, kind="stable")
            self.item_block = np.empty(num_items, np.int64)
            self.item_block[by_freq] = np.arange(num_items) % size
            blocks = self.item_block[train.items[self.mine]]
            self.block_cells = [self.mine[blocks == b] for b in range(size)]
            self.block_items = [np.flatnonzero(self.item_block == b) for b in range(size)]

    def epoch(self, epoch: int, start: int = 0) -> list[SubEpoch]:
        """The sub-epochs of ``epoch`` on this rank (the same count on every rank).

        ``start`` (shuffled only): entries of the epoch's permutation already trained. Rank r
        takes every size-th entry from there, so after b batches on every rank exactly the
        first ``start + b * batch_size * size`` entries are consumed: a run stopped there
        continues from that one number, on any rank count, with the batches the
        uninterrupted run would have had (on as many ranks).
        """
        rng = np.random.default_rng([self.seed, epoch, 3])
        if self.name == "shuffled":
            perm = rng.permutation(len(self.train))
            return [SubEpoch(perm[start:][self.rank::self.size], None)]
        if start:
            raise ValueError(f"Schedule.epoch: start is for the shuffled schedule, not {self.name}")
        if self.name == "columns":
            order = rng.permutation(self.num_items)          # column order of this epoch
            position = np.empty(self.num_items, np.float64)
            position[order] = (np.arange(self.num_items) - self.rank * self.num_items
                               // self.size) % self.num_items
            # Random order inside a column: position + U[0, 0.5) keeps columns contiguous.
            local_rng = np.random.default_rng([self.seed, epoch, 4, self.rank])
            key = position[self.train.items[self.mine]] + 0.5 * local_rng.random(len(self.mine))
            return [SubEpoch(self.mine[np.argsort(key, kind="stable")], None)]
        out = []
        local_rng = np.random.default_rng([self.seed, epoch, 5, self.rank])
        for s in range(self.size):
            b = (self.rank + s) % self.size
            cells = self.block_cells[b]
            out.append(SubEpoch(cells[local_rng.permutation(len(cells))],
                                self.block_items[b] if self.size > 1 else None))
        return out


class _Indexer:
    """Unique keys and positions of bounded ids, without sorting when the range is small.

    ``np.unique`` sorts (O(B log B)); for ids in [0, n) with n not much larger than the
    batch, marking a [n] mask and reading it back is O(n + B) and several times faster.
    Not thread-safe (scratch buffers); one per batch generator.
    """

    def __init__(self, n: int):
        self.n = n
        self.mark = np.zeros(n, bool)
        self.lookup = np.zeros(n, np.int32)

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.n > 8 * len(ids):
            uniq, inverse = np.unique(ids, return_inverse=True)
            return uniq, inverse.astype(np.int32).ravel()
        self.mark[ids] = True
        uniq = np.flatnonzero(self.mark)
        self.mark[uniq] = False
        self.lookup[uniq] = np.arange(len(uniq), dtype=np.int32)
        return uniq.astype(np.int64, copy=False), self.lookup[ids]


def batches(train: Ratings, cells: np.ndarray, batch_size: int, num_users: int,
            num_items: int) -> Iterator[Batch]:
    """``Batch``es of ``batch_size`` ratings (the last padded with weight 0) over ``cells``.

    data: ``u``, ``i`` int32 [B] positions into the batch's user / item keys, ``y`` float32
    [B] ratings, ``w`` float32 [B] weights (0 for padding; padding repeats the first cell).
    """
    users, items = _Indexer(num_users), _Indexer(num_items)
    for start in range(0, len(cells), batch_size):
        part = cells[start:start + batch_size]
        n = len(part)
        w = np.ones(batch_size, np.float32)
        if n < batch_size:
            w[n:] = 0.0
            part = np.concatenate([part, np.full(batch_size - n, part[0])])
        uk, up = users(train.users[part])
        ik, ip = items(train.items[part])
        yield Batch({"user": uk, "item": ik},
                    {"u": up, "i": ip, "y": train.ratings[part], "w": w}, n)


def num_batches(sub_epochs: list[SubEpoch], batch_size: int) -> int:
    return sum(-(-len(s.cells) // batch_size) for s in sub_epochs)
