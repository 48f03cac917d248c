"""Workloads of the benchmark harness (``python -m train.bench``): a small registry.

A workload says how to build a training problem on each rank: its PS tables, row
optimizers, a pure JAX loss over pulled rows, an endless batch source per rank, and the NuPS
hot set at a given scale of its heuristic. The harness, the PS worker and the local baseline
only see this interface, so a new workload is one ``register(Workload(...))`` call.

Registered here: ``kge-zipf`` (a generated Zipf-skewed graph of 1M entities),
``kge-zipf-small`` (the same generator at 30k entities, for ``--quick``), ``fb15k-237``
(needs ``--data-root`` holding a ``fb15k-237/`` folder) and ``kge`` (``python -m
train.kge``'s defaults, for parameters such as ``kge:data=umls,dim=64``), and the MF
workloads ``mf-zipf`` / ``mf-zipf-small`` (synthetic Zipf(1.1) ratings, ``train/mf``'s
pieces; parameters are ``MfConfig`` fields such as ``mf-zipf:schedule=columns``). A workload name
may carry parameters, ``NAME:key=value,...``, which override its settings. All train ComplEx with the KGE
trainer's own pieces (``train/kge/train.py``: ``load``, ``epoch_batches``, ``make_loss``,
``make_tables``; the NuPS heuristic of ``technique_for``).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np


class BenchOptions(NamedTuple):
    """What a workload may depend on besides its own definition (all ranks see the same)."""

    data_root: str = ""   # folder holding real datasets (fb15k-237/, ...); "" = none
    seed: int = 0
    params: tuple = ()    # ((name, value), ...) from "workload:name=value,...": overrides


class Problem(NamedTuple):
    """One training problem as built on a rank.

    Attributes:
      tables: table name -> jaxps.TableSpec (parameter + optimizer-state columns).
      optimizers: table name -> jaxps.RowOptimizer.
      loss_fn: pure JAX ``(rows, data) -> scalar``, rows by position (see SparseTrainer).
      batches: ``(rank, size, owned_keys=None) -> endless iterator of jaxps.Batch`` (this
        rank's share); ``owned_keys(table)``, when given, lists the keys this rank's PS
        holds now (``ps.owned_keys``), for workloads that sample locally (NuPS).
      hot_keys: ``scale -> {table: keys}``: the NuPS hot set at ``scale`` x its heuristic.
      info: sizes for the report (entities, relations, triples, dim, batch, ...).
      max_keys: table -> the most unique keys a batch can have (SparseTrainer's
        ``max_keys``: one padded shape, compiled before the timed steps).
    """

    tables: dict
    optimizers: dict
    loss_fn: Callable
    batches: Callable[..., Iterator]
    hot_keys: Callable[[float], dict]
    info: dict
    max_keys: dict | None = None


@dataclasses.dataclass(frozen=True)
class Workload:
    """A registered workload.

    Attributes:
      name: the registry key (``--workloads NAME``).
      help: one line for ``--list``.
      unavailable: ``options -> None`` if it can run, else the reason (e.g. no data folder).
      prepare: ``options -> None``: one-time work before any rank starts (generate or parse
        and cache the data), run once by the harness in a plain process.
      build: ``(options, comm) -> Problem``, on every rank (comm: MPI communicator).
    """

    name: str
    help: str
    unavailable: Callable[[BenchOptions], str | None]
    prepare: Callable[[BenchOptions], None]
    build: Callable[[BenchOptions, object], Problem]


WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    """Add ``workload`` to the registry (its name must be new)."""
    if workload.name in WORKLOADS:
        raise ValueError(f"workload {workload.name!r} is already registered")
    WORKLOADS[workload.name] = workload
    return workload


def parse(spec: str) -> tuple[Workload, tuple]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (the workload, its parameters).

    Parameters override the workload's settings (for KGE: any ``KgeConfig`` field), e.g.
    ``kge-zipf:synthetic_entities=200000,dim=64``.
    """
    name, _, rest = spec.partition(":")
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; registered: {', '.join(WORKLOADS)}")
    params = []
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"workload {spec!r}: parameters are key=value separated by commas, "
                             f"got {item!r}")
        params.append((key.strip(), value.strip()))
    return WORKLOADS[name], tuple(params)


# ----- KGE workloads -------------------------------------------------------------------------
def kge_hot_keys(train: np.ndarray, num_entities: int, relation_rows: int,
                 scale: float) -> dict:
    """NuPS's KGE hot set at ``scale`` x the heuristic of ``train.kge.train.technique_for``:
    every relation row and the ``scale`` % most frequent training entities (at least one)."""
    counts = np.bincount(train[:, [0, 2]].ravel(), minlength=num_entities)
    n_hot = min(num_entities, max(1, round(scale * (num_entities // 100))))
    hot = np.argsort(-counts, kind="stable")[:n_hot]
    return {"entity": np.sort(hot), "relation": np.arange(relation_rows)}


def _config(cls, label: str, overrides: dict, options: BenchOptions):
    """A workload's config dataclass ``cls``: its overrides, then the ``name:key=value``
    parameters (converted to the fields' types; unknown names are an error)."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    params = {}
    for key, value in options.params:
        if key not in types:
            raise ValueError(f"unknown {label} workload parameter {key!r}; valid: "
                             f"{', '.join(sorted(types))}")
        kind = {"int": int, "float": float, "str": str, "bool": _truth}[str(types[key])]
        params[key] = kind(value)
    return cls(**{"progress": False, "seed": options.seed, **overrides, **params})


def _kge_config(overrides: dict, options: BenchOptions):
    """The workload's KgeConfig."""
    from train.kge.config import KgeConfig
    return _config(KgeConfig, "KGE", overrides, options)


def _truth(value: str) -> bool:
    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(f"expected a boolean (true/false), got {value!r}")
    return value.lower() in ("1", "true", "yes")


def kge_workload(name: str, help: str, config: dict | Callable[[BenchOptions], dict], *,
                 needs: str = "") -> Workload:
    """A KGE workload from ``KgeConfig`` overrides (a dict, or ``options -> dict``).

    ``needs``: a dataset folder name required under ``--data-root`` ("" for generated graphs).
    """
    overrides = config if callable(config) else (lambda options: config)

    def unavailable(options: BenchOptions) -> str | None:
        if not needs:
            return None
        if not options.data_root:
            return f"needs --data-root with a {needs}/ folder"
        if not (Path(options.data_root) / needs / "train.txt").is_file():
            return f"no {Path(options.data_root) / needs / 'train.txt'}"
        return None

    def prepare(options: BenchOptions) -> None:
        from mpi4py import MPI

        from train.kge.train import load
        load(_kge_config(overrides(options), options), MPI.COMM_SELF)

    def build(options: BenchOptions, comm) -> Problem:
        import models
        from train.kge.train import epoch_batches, load, make_loss, make_tables, max_keys

        config = _kge_config(overrides(options), options)
        dataset = load(config, comm)
        train = dataset.splits["train"]
        model = models.get_model(config.model)
        tables, optimizers = make_tables(model, dataset, config)

        # Reciprocal relations (inverse of p at row p + R) need R to build the batches.
        extra = ({"num_relations": dataset.num_relations}
                 if getattr(config, "reciprocal", False) else {})

        def batches(rank: int, size: int, owned_keys=None):
            # --sampling local: negatives among the entity rows held here, as train.kge does.
            pool = (lambda: owned_keys("entity")) if (
                config.sampling == "local" and size > 1 and owned_keys is not None) else None
            for epoch in itertools.count(1):
                yield from epoch_batches(train, dataset.num_entities, config, epoch, rank, size,
                                         pool, **extra)

        def hot_keys(scale: float) -> dict:
            return kge_hot_keys(train, dataset.num_entities, tables["relation"].num_keys, scale)

        info = {"dataset": dataset.name, "entities": dataset.num_entities,
                "relations": dataset.num_relations, "train_triples": len(train),
                "model": config.model, "dim": config.dim, "batch_size": config.batch_size,
                "negatives": config.negatives, "optimizer": config.optimizer, "lr": config.lr}
        return Problem(tables, optimizers, make_loss(model, config), batches, hot_keys, info,
                       max_keys(config, dataset))

    return Workload(name, help, unavailable, prepare, build)


register(kge_workload(
    "kge-zipf", "generated graph, 1M entities (Zipf 0.8), 100 relations, 2M triples; ComplEx "
    "dim 128, batch 512, 256 shared negatives",
    {"synthetic_entities": 1_000_000, "synthetic_relations": 100,
     "synthetic_triples": 2_000_000, "dim": 128, "batch_size": 512, "negatives": 256}))
register(kge_workload(
    "kge-zipf-small", "generated graph, 30k entities (Zipf 0.8), 50 relations, 200k triples; "
    "ComplEx dim 64, batch 512, 256 shared negatives (the --quick workload)",
    {"synthetic_entities": 30_000, "synthetic_relations": 50,
     "synthetic_triples": 200_000, "dim": 64, "batch_size": 512, "negatives": 256}))
register(kge_workload(
    "fb15k-237", "FB15k-237 from --data-root; ComplEx dim 128, batch 512, 256 shared negatives",
    lambda options: {"data": str(Path(options.data_root) / "fb15k-237"), "dim": 128,
                     "batch_size": 512, "negatives": 256},
    needs="fb15k-237"))
register(kge_workload(
    "kge", "any KGE run: python -m train.kge's defaults (a generated 2,000-entity graph), "
    "changed by parameters, e.g. kge:data=umls,dim=64 (names as KgeConfig's fields)", {}))


# ----- MF workloads --------------------------------------------------------------------------
def _mf_config(overrides: dict, options: BenchOptions):
    """The workload's MfConfig: its overrides, then the ``name:key=value`` parameters."""
    from train.mf.config import MfConfig
    config = _config(MfConfig, "MF", overrides, options)
    if config.schedule == "dsgd":
        raise ValueError("MF workload: schedule dsgd needs the sub-epoch barriers of "
                         "`python -m train.mf`; the benchmark runs shuffled or columns")
    return config


def mf_workload(name: str, help: str, config: dict) -> Workload:
    """An MF workload (``python -m train.mf``'s pieces) from ``MfConfig`` overrides."""

    def prepare(options: BenchOptions) -> None:
        from mpi4py import MPI

        from train.mf.train import load
        load(_mf_config(config, options), MPI.COMM_SELF)

    def build(options: BenchOptions, comm) -> Problem:
        from train.mf import schedules
        from train.mf.train import load, make_loss, make_tables

        cfg = _mf_config(config, options)
        dataset = load(cfg, comm)
        train = dataset.splits["train"]
        tables, optimizers = make_tables(dataset, cfg)

        def batches(rank: int, size: int, owned_keys=None):
            plan = schedules.Schedule(train, dataset.num_users, dataset.num_items,
                                      cfg.schedule, rank=rank, size=size, seed=cfg.seed)
            for epoch in itertools.count(1):
                for sub in plan.epoch(epoch):
                    yield from schedules.batches(train, sub.cells, cfg.batch_size,
                                                 dataset.num_users, dataset.num_items)

        def hot_keys(scale: float) -> dict:  # NuPS: the most frequent items replicated
            counts = np.bincount(train.items, minlength=dataset.num_items)
            n_hot = min(dataset.num_items, max(1, round(scale * (dataset.num_items // 100))))
            return {"item": np.sort(np.argsort(-counts, kind="stable")[:n_hot])}

        info = {"dataset": dataset.name, "users": dataset.num_users, "items": dataset.num_items,
                "train_ratings": len(train), "dim": cfg.dim, "batch_size": cfg.batch_size,
                "schedule": cfg.schedule, "optimizer": cfg.optimizer, "lr": cfg.lr}
        return Problem(tables, optimizers, make_loss(dataset.mean, cfg.reg), batches,
                       hot_keys, info)

    return Workload(name, help, lambda options: None, prepare, build)


register(mf_workload(
    "mf-zipf", "synthetic ratings, 1M users x 100k items, 20M cells, Zipf(1.1) columns; "
    "biased MF dim 32, batch 8192, shuffled (parameters e.g. mf-zipf:schedule=columns)",
    {"data": "synthetic:rows=1000000,cols=100000,cells=20000000", "dim": 32,
     "batch_size": 8192}))
register(mf_workload(
    "mf-zipf-small", "synthetic ratings, 50k users x 10k items, 1M cells, Zipf(1.1) columns; "
    "biased MF dim 32, batch 2048, shuffled",
    {"data": "synthetic:rows=50000,cols=10000,cells=1000000", "dim": 32, "batch_size": 2048}))


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(
        prog="python -m train.bench.workloads",
        description="The workload registry of `python -m train.bench`; run without "
                    "arguments to list the registered workloads.").parse_args()
    for w in WORKLOADS.values():
        print(f"{w.name:16s} {w.help}")
