"""The KGE training configuration: one frozen dataclass, the single documented defaults place.

Every field has its help text beside it (``metadata["help"]``) and, where it takes a name, its
valid choices; the command line (``python -m train.kge --help``) is generated from it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import models
from jaxps import TECHNIQUES
from train.common.options import check_fields, make_parser, opt, parse_config, resume_value

OPTIMIZERS = ("adagrad", "adam")
SAMPLINGS = ("uniform", "local")
LOSSES = ("ce", "bce", "margin")
REGULARIZERS = ("n3", "l2")
FILTERS = ("all", "train", "none")  # train/kge/evaluate.py FILTER_SPLITS
TRAIN_TYPES = ("negative_sampling", "1vsAll", "KvsAll")
LR_SCHEDULES = ("none", "plateau", "cosine", "warmup_cosine")
PRESETS = ("", "libkge")
INITS = ("normal", "uniform")


RESUME_MODES = ("", "latest", "auto")


_opt = opt


@dataclass(frozen=True)
class KgeConfig:
    """Settings of one KGE training run.

    The defaults train ComplEx well on small graphs (UMLS, CoDEx-S, the generated main-job
    graph) in minutes: LibKGE's recipe (reciprocal relations, cross-entropy against all
    entities up to 2048, Adagrad) with a light N3 weight. Noisier graphs want more
    regularization (FB15k-237: --reg 0.05; see README).
    """

    data: str = _opt("", "dataset folder (train.txt, valid.txt, test.txt; a path such as "
                     "./umls is always a folder) or a registered name such as umls or fb15k-237 "
                     "(python -m train.kge.datasets list); empty: a small synthetic graph, "
                     "generated once into a cache folder")
    download: bool = _opt(False, "with a registered --data name: download it first if it is "
                          "not there ($JAXPS_DATA, else the user cache folder)")
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
    dropout: float = _opt(0.0, "dropout rate on the embeddings of the batch's triples (entity "
                          "rows, and relation rows unless --relation-dropout is set)", low=0,
                          high=1, high_open=True)
    relation_dropout: float = _opt(-1.0, "dropout rate on relation rows, apart from entities "
                                   "as LibKGE's configs set it; -1: the same as --dropout",
                                   low=-1, high=1, high_open=True)
    lr: float = _opt(0.1, "learning rate", low=0, low_open=True)
    optimizer: str = _opt("adagrad", "row optimizer (its state lives in the PS rows)", OPTIMIZERS)
    # Training types, schedules, early stopping, config files (train/kge/train_types.py,
    # schedules.py, early.py, presets.py).
    train_type: str = _opt("negative_sampling", "negative_sampling: --negatives shared "
                           "entities per batch; 1vsAll: every entity is a negative (as "
                           "--negatives >= #entities); KvsAll: batches of unique (s, p, ?) "
                           "and (?, p, o) queries against all entities, multi-hot labels, BCE "
                           "(LibKGE's KvsAll)", TRAIN_TYPES)
    label_smoothing: float = _opt(0.0, "KvsAll: labels (1 - e) * y + 1 / #entities (ConvE's "
                                  "and LibKGE's label smoothing)", low=0, high=1,
                                  high_open=True)
    lr_schedule: str = _opt("none", "none; plateau: lr *= --lr-factor after --lr-patience "
                            "validations without a better valid MRR (ReduceLROnPlateau, mode "
                            "max); cosine: optax cosine decay to 0 over the run; "
                            "warmup_cosine: linear warm-up over --warmup-epochs, then cosine",
                            LR_SCHEDULES)
    lr_patience: int = _opt(7, "plateau: validations without improvement before the lr drops",
                            low=0)
    lr_factor: float = _opt(0.95, "plateau: factor on the lr at each drop", low=0,
                            low_open=True, high=1, high_open=True)
    warmup_epochs: int = _opt(1, "warmup_cosine: epochs of linear warm-up from 0", low=0)
    patience: int = _opt(0, "early stopping: stop after this many validations (every "
                         "--eval-every epochs) without a valid MRR above the best + "
                         "--min-delta (0: never stop early); with --out, the best epoch's "
                         "model is kept in out/best and is the one tested and exported", low=0)
    min_delta: float = _opt(0.0, "early stopping: the least valid MRR gain that counts as "
                            "better", low=0)
    config: str = _opt("", "YAML file of settings (keys: these options' names with _); "
                       "flags given on the command line override it")
    preset: str = _opt("", "libkge: the published best settings for --data and --model, "
                       "configs/<dataset>-<model>.yaml (see --config)", PRESETS)
    loss: str = _opt("ce", "ce: cross-entropy over (positive, negatives); bce: binary "
                     "cross-entropy; margin: margin ranking", LOSSES)
    margin: float = _opt(1.0, "margin of the margin loss", low=0)
    reg: float = _opt(0.01, "regularization weight (0: none; noisy graphs such as FB15k-237 "
                      "and the generated ones want about 0.05)", low=0)
    reg_type: str = _opt("n3", "n3: weighted nuclear 3-norm (Lacroix et al. 2018); l2: squared "
                         "L2, both on the rows of the batch's positive triples", REGULARIZERS)
    init_embeddings: str = _opt("", "start from the embeddings a finished run exported into "
                                "this folder (its --out; rows matched by name, widths checked "
                                "against --model/--dim; ignored when resuming)")
    init: str = _opt("normal", "initial embeddings: normal (standard deviation --init-scale) "
                     "or uniform (half-width --init-scale), both around --init-mean; LibKGE's "
                     "normal_ / uniform_", INITS)
    init_scale: float = _opt(0.1, "standard deviation (normal) or half-width (uniform) of the "
                             "initial embeddings", low=0, low_open=True)
    init_mean: float = _opt(0.0, "mean (normal) or center (uniform) of the initial embeddings; "
                            "torch's uniform_(a, b) is --init uniform --init-scale (b - a) / 2 "
                            "--init-mean (a + b) / 2")
    technique: str = _opt("adaptive", "parameter management technique of the PS (adaptive: no tuning)", TECHNIQUES)
    lookahead: int = _opt(8, "signal intent this many batches ahead (0: no intents)", low=0,
                          high=64)
    steps_per_call: int = _opt(1, "batches per jitted call (SparseTrainer's steps_per_call): "
                               "one pull, push and PS clock tick per call, less host work per "
                               "batch; other ranks' updates arrive between calls. With more "
                               "than 1, --lookahead counts calls", low=1, high=64)
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
    filter: str = _opt("all", "ranking filter: all: known train+valid+test triples are not "
                       "ranked (the standard filtered metrics); train: only train triples; "
                       "none: raw (unfiltered) ranks", FILTERS)
    eval_batch_size: int = _opt(256, "queries per evaluation step", low=1)
    synthetic_entities: int = _opt(2000, "entities of the generated graph (without --data)",
                                   low=2)
    synthetic_relations: int = _opt(40, "relations of the generated graph", low=1)
    synthetic_triples: int = _opt(80000, "triples of the generated graph (all splits)", low=1)
    progress: bool = _opt(True, "progress within each epoch on rank 0: a bar on a terminal, "
                          "else a plain line every 10%% of the epoch")

    def __post_init__(self):
        object.__setattr__(self, "resume", resume_value(self.resume))
        check_fields(self)
        if self.relation_dropout != -1 and self.relation_dropout < 0:
            raise ValueError(f"--relation-dropout must be -1 (the same as --dropout) or in "
                             f"[0, 1), got {self.relation_dropout!r}")
        model = models.get_model(self.model)
        try:
            model.entity_width(self.dim), model.relation_width(self.dim)
        except ValueError as e:
            raise ValueError(f"--dim {self.dim}: {e}") from None
        if (self.lr_schedule == "plateau" or self.patience) and not self.eval_every:
            raise ValueError("--lr-schedule plateau and --patience act on validations: pass "
                             "--eval-every N (> 0)")
        if (self.checkpoint_every or self.resume) and not self.out:
            raise ValueError("--checkpoint-every and --resume need --out DIR for the checkpoint")


def dropout_rates(config: KgeConfig) -> tuple[float, float]:
    """(entity rate, relation rate) of the embedding dropout."""
    relation = config.dropout if config.relation_dropout == -1 else config.relation_dropout
    return config.dropout, relation


def parser() -> argparse.ArgumentParser:
    """The command line of KgeConfig: one --flag per field, help and defaults from it."""
    return make_parser(KgeConfig, "python -m train.kge", "Train a knowledge graph embedding "
                       "with jaxps (1 process or mpiexec -n N).")


def parse_args(argv=None) -> KgeConfig:
    """KgeConfig from command-line arguments (argparse lists valid choices on errors), over
    the settings of ``--config FILE`` / ``--preset`` (train/kge/presets.py)."""
    from train.kge.presets import apply_config_files
    p = parser()
    apply_config_files(p, argv)
    return parse_config(KgeConfig, p, argv)
