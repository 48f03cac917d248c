"""The MF training configuration: one frozen dataclass, the single documented defaults place.

Every field has its help text beside it (``metadata["help"]``) and, where it takes a name, its
valid choices; the command line (``python -m train.mf --help``) is generated from it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from jaxps import TECHNIQUES
from train.common.options import check_fields, make_parser, opt, parse_config, resume_value

OPTIMIZERS = ("adagrad", "rowwise-adagrad", "sgd", "adam")
SCHEDULES = ("shuffled", "columns", "dsgd")


_opt = opt


def parse_fractions(text: str, name: str = "split") -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` -> (train, valid, test) fractions; they must sum to 1."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"--{name} must be three numbers train,valid,test such as "
                         f"0.9,0.05,0.05, got {text!r}") from e
    if len(parts) != 3 or not all(map(math.isfinite, parts)) or min(parts) < 0 or \
            abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise ValueError(f"--{name} must be three fractions train,valid,test >= 0 summing to 1 "
                         f"(train > 0), got {text!r}")
    return parts


def parse_range(text: str) -> tuple[float, float] | None:
    """``"1,5"`` -> (1.0, 5.0); ``""`` -> None (the range of the training ratings)."""
    if not text:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"--rating-range must be LOW,HIGH such as 1,5, got {text!r}") from e
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"--rating-range must be two finite numbers LOW,HIGH, got {text!r}")
    if not lo < hi:
        raise ValueError(f"--rating-range: LOW must be < HIGH, got {text!r}")
    return lo, hi


@dataclass(frozen=True)
class MfConfig:
    """Settings of one MF training run.

    The defaults were tuned on a validation split (10%) carved from MovieLens-100K u1.base
    (see README, "Matrix factorization"): biased MF, dim 100 as Surprise's SVD, AdaGrad.
    """

    data: str = _opt("", "ratings: a file (user item rating [timestamp], separated by tabs, "
                     "commas, spaces or ::; an optional header line), a folder holding "
                     "ratings.dat, ratings.csv or u.data, or synthetic:rows=R,cols=C,cells=N"
                     "[,skew=1.1,rank=10,noise=0.5] (generated once into a cache folder); "
                     "split by --split. Empty: --train (and --test) or a small synthetic matrix")
    train: str = _opt("", "training ratings file (instead of --data), e.g. u1.base")
    valid: str = _opt("", "validation ratings file (with --train); default: --valid-fraction "
                      "of --train")
    test: str = _opt("", "test ratings file (with --train), e.g. u1.test")
    valid_fraction: float = _opt(0.0, "with --train and no --valid: share of the training "
                                 "ratings held out (seeded) for validation", low=0, high=1,
                                 high_open=True)
    split: str = _opt("0.9,0.05,0.05", "train,valid,test fractions for --data (seeded split)")
    rating_range: str = _opt("", "LOW,HIGH: ratings outside are an error, predictions are "
                             "clipped to it; empty: the range of the training ratings")
    dim: int = _opt(100, "factors per user and item (each row also holds a bias)", low=1)
    epochs: int = _opt(9, "passes over the training ratings (with --resume: the total, "
                       "counting the epochs already trained)", low=1)
    batch_size: int = _opt(256, "ratings per batch (per rank)", low=1)
    lr: float = _opt(0.05, "learning rate", low=0, low_open=True)
    reg: float = _opt(0.1, "L2 weight, paid per occurrence of a row in a rating (Surprise's "
                      "reg_all)", low=0)
    optimizer: str = _opt("adagrad", "row optimizer (its state lives in the PS rows); "
                          "rowwise-adagrad keeps one accumulator per row (half the row "
                          "width of adagrad: faster at large dim)", OPTIMIZERS)
    init_scale: float = _opt(0.01, "standard deviation of the normal initial factors and "
                             "biases", low=0, low_open=True)
    schedule: str = _opt("shuffled", "shuffled: cells in random order, split over ranks; "
                         "columns: users partitioned over ranks, columns visited in order "
                         "(each rank from its own offset), intents hide the latency; dsgd: "
                         "N x N blocks, in sub-epoch s rank r trains block (r, (r+s) mod N) "
                         "after localizing that column block", SCHEDULES)
    technique: str = _opt("adaptive", "parameter management technique of the PS", TECHNIQUES)
    lookahead: int = _opt(8, "signal intent this many batches ahead (0: no intents)", low=0,
                          high=64)
    steps_per_call: int = _opt(1, "batches per jitted call (SparseTrainer's steps_per_call): "
                               "one pull, push and PS clock tick per call, less host work per "
                               "batch; other ranks' updates arrive between calls. With more "
                               "than 1, --lookahead counts calls", low=1, high=64)
    seed: int = _opt(0, "seed of initialization, splits and shuffling", low=0, high=2**32 - 1)
    out: str = _opt("", "output folder: metrics.jsonl, summary.json, checkpoints/, factors; "
                    "checked for writability and free space before training (nothing is "
                    "written there before the ratings were read)")
    checkpoint_every: int = _opt(0, "write a sharded checkpoint to out/checkpoints every N "
                                 "epochs (0: never; SIGINT/SIGTERM write one anyway)", low=0)
    keep_checkpoints: int = _opt(2, "keep the newest K checkpoints in out/checkpoints", low=1)
    resume: str = _opt("", "--resume (latest): continue from the newest checkpoint in "
                       "out/checkpoints, an error if there is none; --resume auto: the same, "
                       "or start afresh without one; --resume PATH: that checkpoint folder")
    peer_timeout: float = _opt(60.0, "end the job, naming the rank, when a peer rank has sent "
                               "nothing (the PS sends heartbeats) for this many seconds: it "
                               "is stopped, hung or its host is gone (0: wait forever)", low=0)
    eval_every: int = _opt(1, "evaluate on valid every N epochs (0: only at the end)", low=0)
    synthetic_rows: int = _opt(20000, "users of the default synthetic matrix (no --data/--train)",
                               low=1)
    synthetic_cols: int = _opt(5000, "items of the default synthetic matrix", low=1)
    synthetic_cells: int = _opt(400000, "ratings of the default synthetic matrix (all splits)",
                                low=1)
    progress: bool = _opt(True, "progress within each epoch on rank 0: a bar on a terminal, "
                          "else a plain line every 10%% of the epoch")

    def __post_init__(self):
        object.__setattr__(self, "resume", resume_value(self.resume))
        check_fields(self)
        parse_fractions(self.split)
        parse_range(self.rating_range)
        if self.data and (self.train or self.valid or self.test):
            raise ValueError("give either --data or --train/--valid/--test, not both")
        if (self.valid or self.test) and not self.train:
            raise ValueError("--valid/--test need --train")
        if self.valid and self.valid_fraction:
            raise ValueError("give either --valid FILE or --valid-fraction, not both")
        if (self.checkpoint_every or self.resume) and not self.out:
            raise ValueError("--checkpoint-every and --resume need --out DIR for the checkpoint")


def parser() -> argparse.ArgumentParser:
    """The command line of MfConfig: one --flag per field, help and defaults from it."""
    return make_parser(MfConfig, "python -m train.mf", "Train biased matrix factorization "
                       "with jaxps (1 process or mpiexec -n N).")


def parse_args(argv=None) -> MfConfig:
    """MfConfig from command-line arguments (argparse lists valid choices on errors)."""
    return parse_config(MfConfig, parser(), argv)
