"""The MF training configuration: one frozen dataclass, the single documented defaults place.

Every field has its help text beside it (``metadata["help"]``) and, where it takes a name, its
valid choices; the command line (``python -m train.mf --help``) is generated from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from jaxps import TECHNIQUES

OPTIMIZERS = ("adagrad", "rowwise-adagrad", "sgd", "adam")
SCHEDULES = ("shuffled", "columns", "dsgd")


def _opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


def parse_fractions(text: str, name: str = "split") -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` -> (train, valid, test) fractions; they must sum to 1."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"{name} must be three numbers train,valid,test such as 0.9,0.05,0.05, "
                         f"got {text!r}") from e
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise ValueError(f"{name} must be three fractions train,valid,test >= 0 summing to 1 "
                         f"(train > 0), got {text!r}")
    return parts


def parse_range(text: str) -> tuple[float, float] | None:
    """``"1,5"`` -> (1.0, 5.0); ``""`` -> None (the range of the training ratings)."""
    if not text:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"rating-range must be LOW,HIGH such as 1,5, got {text!r}") from e
    if not lo < hi:
        raise ValueError(f"rating-range: LOW must be < HIGH, got {text!r}")
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
                                 "ratings held out (seeded) for validation")
    split: str = _opt("0.9,0.05,0.05", "train,valid,test fractions for --data (seeded split)")
    rating_range: str = _opt("", "LOW,HIGH: ratings outside are an error, predictions are "
                             "clipped to it; empty: the range of the training ratings")
    dim: int = _opt(100, "factors per user and item (each row also holds a bias)")
    epochs: int = _opt(9, "passes over the training ratings")
    batch_size: int = _opt(256, "ratings per batch (per rank)")
    lr: float = _opt(0.05, "learning rate")
    reg: float = _opt(0.1, "L2 weight, paid per occurrence of a row in a rating (Surprise's "
                      "reg_all)")
    optimizer: str = _opt("adagrad", "row optimizer (its state lives in the PS rows); "
                          "rowwise-adagrad keeps one accumulator per row (half the row "
                          "width of adagrad: faster at large dim)", OPTIMIZERS)
    init_scale: float = _opt(0.01, "standard deviation of the normal initial factors and "
                             "biases")
    schedule: str = _opt("shuffled", "shuffled: cells in random order, split over ranks; "
                         "columns: users partitioned over ranks, columns visited in order "
                         "(each rank from its own offset), intents hide the latency; dsgd: "
                         "N x N blocks, in sub-epoch s rank r trains block (r, (r+s) mod N) "
                         "after localizing that column block", SCHEDULES)
    technique: str = _opt("adaptive", "parameter management technique of the PS", TECHNIQUES)
    lookahead: int = _opt(1, "signal intent this many batches ahead (0: no intents)")
    seed: int = _opt(0, "seed of initialization, splits and shuffling")
    out: str = _opt("", "output folder: metrics.jsonl, summary.json, checkpoint, factors")
    checkpoint_every: int = _opt(0, "write out/checkpoint.npz every N epochs (0: never)")
    resume: bool = _opt(False, "continue from out/checkpoint.npz if it exists")
    eval_every: int = _opt(1, "evaluate on valid every N epochs (0: only at the end)")
    synthetic_rows: int = _opt(20000, "users of the default synthetic matrix (no --data/--train)")
    synthetic_cols: int = _opt(5000, "items of the default synthetic matrix")
    synthetic_cells: int = _opt(400000, "ratings of the default synthetic matrix (all splits)")
    progress: bool = _opt(True, "show a progress bar on rank 0")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
        for name in ("dim", "epochs", "batch_size", "synthetic_rows", "synthetic_cols",
                     "synthetic_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "reg", "init_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lookahead", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid-fraction must be in [0, 1), got {self.valid_fraction}")
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
    p = argparse.ArgumentParser(
        prog="python -m train.mf",
        description="Train biased matrix factorization with jaxps (1 process or mpiexec -n N).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(MfConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": f.default, "help": f.metadata["help"]}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[f.type]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        p.add_argument(flag, **kwargs)
    return p


def parse_args(argv=None) -> MfConfig:
    """MfConfig from command-line arguments (argparse lists valid choices on errors)."""
    args = parser().parse_args(argv)
    try:
        return MfConfig(**vars(args))
    except ValueError as e:
        parser().error(str(e))
