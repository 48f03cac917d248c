"""The KGE training configuration: one frozen dataclass, the single documented defaults place.

Every field has its help text beside it (``metadata["help"]``) and, where it takes a name, its
valid choices; the command line (``python -m train.kge --help``) is generated from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import models
from jaxps import TECHNIQUES

OPTIMIZERS = ("adagrad", "adam")
SAMPLINGS = ("uniform", "local")
LOSSES = ("ce", "bce", "margin")
REGULARIZERS = ("n3", "l2")


def _opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


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
    dim: int = _opt(256, "embedding size (real numbers per entity row; ComplEx: dim/2 complex)")
    epochs: int = _opt(10, "passes over the training triples")
    batch_size: int = _opt(512, "positive triples per batch (per rank)")
    negatives: int = _opt(2048, "batch-shared negative entities per batch, used to corrupt both "
                          "head and tail; >= number of entities means all entities (1vsAll)")
    sampling: str = _opt("uniform", "uniform: negatives from all entities; local (NuPS): "
                         "from the entity rows this rank holds now, so sampling moves no "
                         "data (refreshed every 16 batches; equals uniform on 1 rank)", SAMPLINGS)
    reciprocal: bool = _opt(True, "reciprocal relations (LibKGE's reciprocal_relations_model): "
                            "a second embedding p^-1 per relation, and head queries (?, p, o) "
                            "scored as tail queries (o, p^-1, ?)")
    dropout: float = _opt(0.0, "dropout rate on the embeddings of the batch's triples")
    lr: float = _opt(0.1, "learning rate")
    optimizer: str = _opt("adagrad", "row optimizer (its state lives in the PS rows)", OPTIMIZERS)
    loss: str = _opt("ce", "ce: cross-entropy over (positive, negatives); bce: binary "
                     "cross-entropy; margin: margin ranking", LOSSES)
    margin: float = _opt(1.0, "margin of the margin loss")
    reg: float = _opt(0.01, "regularization weight (0: none; noisy graphs such as FB15k-237 "
                      "and the generated ones want about 0.05)")
    reg_type: str = _opt("n3", "n3: weighted nuclear 3-norm (Lacroix et al. 2018); l2: squared "
                         "L2, both on the rows of the batch's positive triples", REGULARIZERS)
    init_scale: float = _opt(0.1, "standard deviation of the normal initial embeddings")
    technique: str = _opt("adaptive", "parameter management technique of the PS (adaptive: no tuning)", TECHNIQUES)
    lookahead: int = _opt(2, "signal intent this many batches ahead (0: no intents)")
    seed: int = _opt(0, "seed of initialization, shuffling and negative sampling")
    out: str = _opt("", "output folder: metrics.jsonl, summary.json, checkpoint, embeddings")
    checkpoint_every: int = _opt(0, "write out/checkpoint.npz every N epochs (0: never)")
    resume: bool = _opt(False, "continue from out/checkpoint.npz if it exists")
    eval_every: int = _opt(5, "evaluate on valid every N epochs (0: only at the end)")
    max_eval: int = _opt(2000, "evaluate at most this many valid/test triples (0: all)")
    eval_batch_size: int = _opt(256, "queries per evaluation step")
    synthetic_entities: int = _opt(2000, "entities of the generated graph (without --data)")
    synthetic_relations: int = _opt(40, "relations of the generated graph")
    synthetic_triples: int = _opt(80000, "triples of the generated graph (all splits)")
    progress: bool = _opt(True, "show a progress bar on rank 0")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
        positive = ("dim", "epochs", "batch_size", "negatives", "eval_batch_size",
                    "synthetic_entities", "synthetic_relations", "synthetic_triples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "reg", "init_scale", "margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lookahead", "checkpoint_every", "eval_every", "max_eval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if (self.checkpoint_every or self.resume) and not self.out:
            raise ValueError("--checkpoint-every and --resume need --out DIR for the checkpoint")


def parser() -> argparse.ArgumentParser:
    """The command line of KgeConfig: one --flag per field, help and defaults from it."""
    p = argparse.ArgumentParser(
        prog="python -m train.kge",
        description="Train a knowledge graph embedding with jaxps (1 process or mpiexec -n N).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(KgeConfig):
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


def parse_args(argv=None) -> KgeConfig:
    """KgeConfig from command-line arguments (argparse lists valid choices on errors)."""
    args = parser().parse_args(argv)
    try:
        return KgeConfig(**vars(args))
    except ValueError as e:
        parser().error(str(e))
