"""The KGE training configuration: one frozen dataclass, the single documented defaults place.

Every field has its help text beside it (``metadata["help"]``) and, where it takes a name, its
valid choices; the command line (``python -m train.kge --help``) is generated from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

import models
from jaxps import TECHNIQUES

OPTIMIZERS = ("adagrad", "adam")
SAMPLINGS = ("uniform", "local")
LOSSES = ("ce", "bce", "margin")
REGULARIZERS = ("n3", "l2")


RESUME_MODES = ("", "latest", "auto")


def _opt(default, help: str, choices=None, *, low=None, high=None, low_open=False,
         high_open=False):
    """A field with its help text, valid choices, and numeric range [low, high] (``*_open``:
    the bound itself is excluded); every numeric field must also be finite."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low,
                                            "high": high, "low_open": low_open,
                                            "high_open": high_open})


@dataclass(frozen=True)
class KgeConfig:
    """Settings of one KGE training run.

    The defaults train ComplEx well on small graphs (UMLS, CoDEx-S, the generated main-job
    graph) in minutes: LibKGE's recipe (reciprocal relations, cross-entropy against all
    entities up to 2048, Adagrad) with a light N3 weight. Noisier graphs want more
    regularization (FB15k-237: --reg 0.05; see README).
    """

    data: str = _opt("", "dataset folder (train.txt, valid.txt, test.txt) or a registered name "
                     "such as umls or fb15k-237; empty: a small synthetic graph, generated once "
                     "into a cache folder")
    model: str = _opt("complex", "KGE model", tuple(sorted(models.MODELS)))
    dim: int = _opt(256, "embedding size (real numbers per entity row; ComplEx: dim/2 complex)",
                   low=1)
    epochs: int = _opt(10, "passes over the training triples (with --resume: the total, counting "
                      "the epochs already trained)", low=1)
    batch_size: int = _opt(512, "positive triples per batch (per rank)", low=1)
    negatives: int = _opt(2048, "batch-shared negative entities per batch, used to corrupt both "
                          "head and tail; >= number of entities means all entities (1vsAll)", low=1)
    sampling: str = _opt("uniform", "uniform: negatives from all entities; local (NuPS): "
                         "from the entity rows this rank holds now, so sampling moves no "
                         "data (refreshed every 16 batches; equals uniform on 1 rank)", SAMPLINGS)
    reciprocal: bool = _opt(True, "reciprocal relations (LibKGE's reciprocal_relations_model): "
                            "a second embedding p^-1 per relation, and head queries (?, p, o) "
                            "scored as tail queries (o, p^-1, ?)")
    dropout: float = _opt(0.0, "dropout rate on the embeddings of the batch's triples", low=0,
                          high=1, high_open=True)
    lr: float = _opt(0.1, "learning rate", low=0, low_open=True)
    optimizer: str = _opt("adagrad", "row optimizer (its state lives in the PS rows)", OPTIMIZERS)
    loss: str = _opt("ce", "ce: cross-entropy over (positive, negatives); bce: binary "
                     "cross-entropy; margin: margin ranking", LOSSES)
    margin: float = _opt(1.0, "margin of the margin loss", low=0)
    reg: float = _opt(0.01, "regularization weight (0: none; noisy graphs such as FB15k-237 "
                      "and the generated ones want about 0.05)", low=0)
    reg_type: str = _opt("n3", "n3: weighted nuclear 3-norm (Lacroix et al. 2018); l2: squared "
                         "L2, both on the rows of the batch's positive triples", REGULARIZERS)
    init_scale: float = _opt(0.1, "standard deviation of the normal initial embeddings", low=0,
                             low_open=True)
    technique: str = _opt("adaptive", "parameter management technique of the PS (adaptive: no tuning)", TECHNIQUES)
    lookahead: int = _opt(2, "signal intent this many batches ahead (0: no intents)", low=0,
                          high=64)
    seed: int = _opt(0, "seed of initialization, shuffling and negative sampling", low=0,
                     high=2**32 - 1)
    out: str = _opt("", "output folder: metrics.jsonl, summary.json, checkpoints/, embeddings; "
                    "checked for writability and free space before training")
    checkpoint_every: int = _opt(0, "write a sharded checkpoint to out/checkpoints every N "
                                 "epochs (0: never; SIGINT/SIGTERM write one anyway)", low=0)
    keep_checkpoints: int = _opt(2, "keep the newest K checkpoints in out/checkpoints", low=1)
    resume: str = _opt("", "--resume (latest): continue from the newest checkpoint in "
                       "out/checkpoints, an error if there is none; --resume auto: the same, "
                       "or start afresh without one; --resume PATH: that checkpoint folder")
    peer_timeout: float = _opt(60.0, "end the job, naming the rank, when a peer rank has sent "
                               "nothing (the PS sends heartbeats) for this many seconds: it "
                               "is stopped, hung or its host is gone (0: wait forever)", low=0)
    eval_every: int = _opt(5, "evaluate on valid every N epochs (0: only at the end)", low=0)
    max_eval: int = _opt(2000, "evaluate at most this many valid/test triples (0: all)", low=0)
    eval_batch_size: int = _opt(256, "queries per evaluation step", low=1)
    synthetic_entities: int = _opt(2000, "entities of the generated graph (without --data)",
                                   low=2)
    synthetic_relations: int = _opt(40, "relations of the generated graph", low=1)
    synthetic_triples: int = _opt(80000, "triples of the generated graph (all splits)", low=1)
    progress: bool = _opt(True, "show a progress bar on rank 0")

    def __post_init__(self):
        if isinstance(self.resume, bool):  # KgeConfig(resume=True) from code: the newest
            object.__setattr__(self, "resume", "latest" if self.resume else "")
        for f in dataclasses.fields(self):
            flag = "--" + f.name.replace("_", "-")
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
            if f.type in ("int", "float", int, float):
                _check_number(flag, value, f.metadata, integer=f.type in ("int", int))
        model = models.get_model(self.model)
        try:
            model.entity_width(self.dim), model.relation_width(self.dim)
        except ValueError as e:
            raise ValueError(f"--dim {self.dim}: {e}") from None
        if (self.checkpoint_every or self.resume) and not self.out:
            raise ValueError("--checkpoint-every and --resume need --out DIR for the checkpoint")


def _check_number(flag: str, value, meta: dict, *, integer: bool) -> None:
    """Raise ValueError unless ``value`` is a finite number within the field's range."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)) or not math.isfinite(value):
        raise ValueError(f"{flag} must be {kind}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    bad_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    bad_high = high is not None and (value >= high if meta.get("high_open") else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if meta.get("low_open") else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if meta.get("high_open") else "]")
        rng = (f"in {lo}, {hi}" if low is not None and high is not None else
               f"{'>' if meta.get('low_open') else '>='} {low}" if low is not None else
               f"{'<' if meta.get('high_open') else '<='} {high}")
        raise ValueError(f"{flag} must be {rng}, got {value!r}")


def parser() -> argparse.ArgumentParser:
    """The command line of KgeConfig: one --flag per field, help and defaults from it."""
    p = argparse.ArgumentParser(
        prog="python -m train.kge",
        description="Train a knowledge graph embedding with jaxps (1 process or mpiexec -n N).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(KgeConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": f.default, "help": f.metadata["help"]}
        if f.name == "resume":  # --resume alone means "latest"
            kwargs.update(nargs="?", const="latest", metavar="latest|auto|PATH")
        elif f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[f.type]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        p.add_argument(flag, **kwargs)
    return p


def parse_args(argv=None) -> KgeConfig:
    """KgeConfig from command-line arguments (argparse lists valid choices on errors)."""
    args = parser().parse_args(argv)
    try:
        return KgeConfig(**vars(args))
    except ValueError as e:
        parser().error(str(e))
