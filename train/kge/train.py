"""KGE training on the parameter server: batches with shared negatives, loss, the epoch loop.

Tables: "entity" [num_entities, width] and "relation" [num_relations, width], each row
followed by its optimizer state. Each epoch, the training triples are shuffled (the same
permutation on every rank) and rank r takes every size-th triple starting at r. A batch is
``batch_size`` positives plus ``negatives`` entities drawn uniformly and shared by the whole
batch, used to corrupt both the head and the tail. Batches are built in the trainer's
background thread ahead of time, so the negatives of batch t+1 are drawn before batch t runs
and are part of its intent.

Reliability (docs/reliability.md): every check runs before training and fails all ranks;
checkpoints are sharded (``jaxps.save_checkpoint``) and resumed only after the config and
dataset were compared (train/kge/resume.py); SIGINT/SIGTERM stop all ranks at a common batch
(train/common/interrupt.py); outputs are written atomically (train/common/outputs.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

import jaxps
import models
from jaxps import ParameterServer, TableSpec
from jaxps import Batch, SparseTrainer, index_batch, row_adagrad
from train.common import outputs
from train.common.interrupt import StopRequest
from train.common.launch import ps_options
from train.common.resume import restore
from train.common.stats import global_stats
from train.kge import early, synthetic, train_types
from train.kge.config import KgeConfig, dropout_rates
from train.kge.data import KgeDataset, load_dataset, user_cache_dir
from train.kge import init_embeddings, report
from train.kge.evaluate import Scorers, build_filter, evaluate, filter_sets, reciprocal_scorers
from train.common.progress import EpochProgress
from train.kge.relation_types import relation_types, type_counts
from train.kge.resume import (check_compatible, checkpoint_root, dataset_fingerprint, describe,
                              find_checkpoint)
from train.kge.schedules import LrSchedule

_SNAPSHOT_FLOATS = 1 << 28  # evaluation copies the entity table when it is at most 1 GiB
_MASKED = -1e30


# ----- data ----------------------------------------------------------------------------------
def load(config: KgeConfig, comm: MPI.Comm) -> KgeDataset:
    """The dataset of ``config.data``, or the default synthetic graph, on every rank.

    The synthetic graph is generated on rank 0 first (a failure there, such as a graph too
    small to generate, fails every rank with its message), then by every rank that does not
    see rank 0's copy: ranks on other hosts have their own cache folder, and the graph is
    deterministic in its seed, so their copies are identical.
    """
    if config.data:
        from train.kge.datasets import resolve_on_ranks
        return load_dataset(resolve_on_ranks(config.data, download=config.download, comm=comm))
    n, r, m = config.synthetic_entities, config.synthetic_relations, config.synthetic_triples
    # The cluster count is part of the name: graphs cached before its default changed differ.
    k = synthetic.default_num_clusters(n)
    name = f"e{n}-r{r}-t{m}-c{k}-s{config.seed}"

    def generate() -> None:
        folder = user_cache_dir() / "synthetic" / name
        if (folder / "test.txt").is_file():
            return
        # Written aside and renamed: a concurrent run never reads a half-written folder.
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        try:
            splits = synthetic.generate(n, r, m, seed=config.seed)
            if empty := [k for k, v in splits.items() if not len(v)]:
                raise ValueError(f"too small to hold out {' and '.join(empty)} triples; raise "
                                 "--synthetic-triples / --synthetic-entities")
            synthetic.write_dataset(tmp, splits)
        except ValueError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"cannot generate the synthetic graph (--synthetic-entities {n} "
                             f"--synthetic-relations {r} --synthetic-triples {m}): {e}") from e
        try:
            os.replace(tmp, folder)
        except OSError:  # another process renamed its identical copy first
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "test.txt").is_file():
                raise

    jaxps.run_on_root(generate, comm=comm)
    if comm.Get_rank() != 0:
        generate()  # no-op where rank 0's copy is visible (a shared cache folder)
    return load_dataset(user_cache_dir() / "synthetic" / name)


def epoch_batches(train: np.ndarray, num_entities: int, config: KgeConfig, epoch: int,
                  rank: int, size: int, local_pool=None, *, num_relations: int = 0,
                  start: int = 0):
    """This rank's batches of one epoch: ``Batch(keys, data)``; data indexes rows by position.

    data: s, p, o int32 [B] positions; neg int32 [K] positions; weight float32 [B] (0 pads
    the last batch to the same shape, so the step never recompiles for it); seed uint32
    (dropout); with ``config.reciprocal`` also p_inv int32 [B], the positions of the inverse
    relations' rows (key p + num_relations). ``local_pool``: ``() -> entity keys held here``,
    for local sampling.

    Data order: the epoch's permutation of the training triples (the same on every rank);
    rank r takes every size-th of its entries from ``start`` on. After b batches on every
    rank, exactly the entries ``[start, start + b * batch_size * size)`` are consumed, so a
    run stopped there continues with ``start`` = that position, on any rank count. Each
    batch's random numbers come from its own generator, seeded by (seed, epoch, rank, size,
    position of the batch), so a continuation on as many ranks draws what the uninterrupted
    run would have drawn.
    """
    if config.reciprocal and num_relations < 1:
        raise ValueError("epoch_batches: --reciprocal needs num_relations (the inverse of "
                         "relation p is row p + num_relations)")
    if config.train_type == "KvsAll":  # train: train_types.Queries
        yield from train_types.kvsall_batches(train, num_entities, config, epoch, rank, size,
                                              start=start)
        return
    perm = np.random.default_rng([config.seed, epoch]).permutation(len(train))
    mine = train[perm[start:][rank::size]]
    b = config.batch_size
    all_entities = train_types.all_entities(config, num_entities)
    pool = None
    for index, first in enumerate(range(0, len(mine), b)):
        rng = np.random.default_rng([config.seed, epoch, rank, size, start + first * size])
        part = mine[first:first + b]
        weight = np.zeros(b, np.float32)
        weight[:len(part)] = 1.0
        part = np.concatenate([part, np.repeat(part[:1], b - len(part), axis=0)])
        if local_pool is not None and index % 16 == 0:
            pool = local_pool()
        if all_entities:
            neg = np.arange(num_entities)
        elif pool is not None and len(pool):
            neg = pool[rng.integers(0, len(pool), config.negatives)]
        else:
            neg = rng.integers(0, num_entities, config.negatives)
        relations = (part[:, 1], part[:, 1] + num_relations) if config.reciprocal else part[:, 1]
        keys, pos = index_batch({"entity": (part[:, 0], part[:, 2], neg), "relation": relations})
        (s, o, n), p = pos["entity"], pos["relation"]
        data = {"s": s, "o": o, "neg": n, "weight": weight, "seed": np.uint32(rng.integers(2**32))}
        if config.reciprocal:
            data["p"], data["p_inv"] = p
        else:
            data["p"] = p
        yield Batch(keys, data, len(mine[first:first + b]))


def num_batches(num_train: int, config: KgeConfig, rank: int, size: int, start: int = 0) -> int:
    return math.ceil(len(range(start + rank, num_train, size)) / config.batch_size)


# ----- loss ----------------------------------------------------------------------------------
def make_loss(model: models.KgeModel, config: KgeConfig):
    """Pure JAX ``(rows, data) -> scalar``: both-direction loss over shared negatives + reg."""

    def direction_loss(pos, neg):
        if config.loss == "ce":
            logits = jnp.concatenate([pos[:, None], neg], axis=1)
            return jax.nn.logsumexp(logits, axis=1) - pos
        valid = neg > _MASKED / 2
        count = jnp.maximum(jnp.sum(valid, axis=1), 1)
        if config.loss == "bce":
            per_neg = jnp.where(valid, jax.nn.softplus(neg), 0.0)
            return jax.nn.softplus(-pos) + jnp.sum(per_neg, axis=1) / count
        per_neg = jnp.where(valid, jax.nn.relu(config.margin - pos[:, None] + neg), 0.0)
        return jnp.sum(per_neg, axis=1) / count

    def regularizer(x):
        if config.reg_type == "n3":
            return jnp.sum(jnp.abs(x) ** 3)
        return jnp.sum(x ** 2)

    if config.train_type == "KvsAll":
        return train_types.make_kvsall_loss(model, config, regularizer)
    entity_rate, relation_rate = dropout_rates(config)

    def loss_fn(rows, data):
        ent, rel = rows["entity"], rows["relation"]
        s, p, o, neg = ent[data["s"]], rel[data["p"]], ent[data["o"]], ent[data["neg"]]
        # Reciprocal: the head query (?, p, o) is the tail query (o, p^-1, ?) of its own row.
        p_inv = rel[data["p_inv"]] if config.reciprocal else p
        if entity_rate or relation_rate:
            keys = jax.random.split(jax.random.PRNGKey(data["seed"]), 4)
            s, p, o, p_inv = (train_types.dropout(k, x, rate) for k, x, rate in zip(
                keys, (s, p, o, p_inv), (entity_rate, relation_rate, entity_rate, relation_rate)))
        tail = model.score_sp_(s, p, neg)
        if config.reciprocal:
            pos_tail, pos_head = model.score_spo(s, p, o), model.score_spo(o, p_inv, s)
            head = model.score_sp_(o, p_inv, neg)
        else:
            pos_tail = pos_head = model.score_spo(s, p, o)
            head = model.score__po(neg, p, o)
        # A shared negative equal to the true answer is not a negative.
        tail = jnp.where(data["neg"][None, :] == data["o"][:, None], _MASKED, tail)
        head = jnp.where(data["neg"][None, :] == data["s"][:, None], _MASKED, head)
        w = data["weight"]
        total = jnp.sum(w * (direction_loss(pos_tail, tail) + direction_loss(pos_head, head)))
        if config.reg:
            wr = w[:, None]
            parts = (s, p, o, p_inv) if config.reciprocal else (s, p, o)
            total += config.reg * sum(regularizer(wr * x) for x in parts)
        return total / jnp.maximum(jnp.sum(w), 1.0)

    return loss_fn


# ----- PS tables and reading them back -------------------------------------------------------
def make_tables(model, dataset: KgeDataset, config: KgeConfig):
    if config.optimizer == "adagrad":
        # Accumulator starting at 0, as PyTorch's Adagrad that LibKGE's and KBC's published
        # configs use: with optax's 0.1, small initial embeddings barely move.
        opt = row_adagrad(config.lr, initial_accumulator_value=0.0)
    else:
        opt = jaxps.ROW_OPTIMIZERS[config.optimizer](config.lr)
    widths = {"entity": model.entity_width(config.dim), "relation": model.relation_width(config.dim)}
    sizes = {"entity": dataset.num_entities,
             "relation": dataset.num_relations * (2 if config.reciprocal else 1)}
    tables = {t: TableSpec(sizes[t], widths[t], init=config.init, init_scale=config.init_scale,
                           init_mean=config.init_mean, state_dim=opt.state_dim(widths[t]),
                           state_init=opt.state_init, seed=config.seed) for t in sizes}
    return tables, {t: opt for t in tables}


def max_keys(config: KgeConfig, dataset: KgeDataset) -> dict:
    """The most unique keys one batch of ``epoch_batches`` touches per table (heads, tails
    and negatives; relations and their inverses): SparseTrainer pads every batch to these,
    so the step compiles once, before the first epoch."""
    relation_rows = dataset.num_relations * (2 if config.reciprocal else 1)
    if config.train_type == "KvsAll":
        return train_types.kvsall_max_keys(config, dataset.num_entities, relation_rows)
    if train_types.all_entities(config, dataset.num_entities):
        return {"entity": dataset.num_entities, "relation": min(
            relation_rows, config.batch_size * (2 if config.reciprocal else 1))}
    return {"entity": min(dataset.num_entities, 2 * config.batch_size + config.negatives),
            "relation": min(relation_rows, config.batch_size * (2 if config.reciprocal else 1))}


def technique_for(config: KgeConfig, dataset: KgeDataset):
    """The PS technique; "nups" gets NuPS's KGE hot set: every relation and the 1% most
    frequent training entities are replicated, the rest relocated."""
    if config.technique != "nups":
        return config.technique
    train = dataset.splits["train"]
    counts = np.bincount(train[:, [0, 2]].ravel(), minlength=dataset.num_entities)
    hot = np.argsort(-counts, kind="stable")[:max(1, dataset.num_entities // 100)]
    relations = dataset.num_relations * (2 if config.reciprocal else 1)
    return jaxps.Nups(hot_keys={"entity": np.sort(hot), "relation": np.arange(relations)})


def read_table(ps: ParameterServer, table: str, *, columns: int | None = None,
               chunk: int = 1 << 16) -> np.ndarray:
    """The whole table (or its first ``columns`` columns), pulled in chunks."""
    n = ps.tables[table].num_keys
    parts = [ps.pull(table, np.arange(a, min(a + chunk, n)))[:, :columns]
             for a in range(0, n, chunk)]
    return np.concatenate(parts)


def scorers_for(model: models.KgeModel, config: KgeConfig) -> Scorers:
    """The evaluation scorers; with --reciprocal, relation rows are read as [p | p^-1]."""
    if config.reciprocal:
        return reciprocal_scorers(model.score_sp_)
    return Scorers(model.score_sp_, model.score__po)


def run_evaluation(ps, scorers: Scorers, widths, triples, filter_index, config, comm, *,
                   relation_groups=None) -> dict:
    """Ranking metrics of ``triples``; collective over ``comm`` (ranks split queries)."""
    ps.wait_sync()  # every rank's pushes are applied (replicas too) before anyone reads
    # Rows are read before `evaluate` (whose Allgatherv is a blocking collective, see run()).
    # A table too big to copy is pulled chunk by chunk during `evaluate` instead.
    n_ent = ps.tables["entity"].num_keys
    if n_ent * widths["entity"] <= _SNAPSHOT_FLOATS:
        snapshot = read_table(ps, "entity", columns=widths["entity"])
        entity_rows = lambda a, b: snapshot[a:b]
    else:
        entity_rows = lambda a, b: ps.pull("entity", np.arange(a, b))[:, :widths["entity"]]
    relations = read_table(ps, "relation", columns=widths["relation"])
    if config.reciprocal:  # row p + R is p^-1: rows [p | p^-1] for reciprocal_scorers
        half = len(relations) // 2
        relations = np.concatenate([relations[:half], relations[half:]], axis=1)
    relation_rows = lambda ids: relations[ids]
    ps.barrier()  # every rank has its copy before any enters evaluate's collectives
    result = evaluate(triples, filter_index=filter_index, entity_rows=entity_rows,
                      relation_rows=relation_rows, score_sp_=scorers.score_sp_,
                      score__po=scorers.score__po, batch_size=config.eval_batch_size,
                      relation_groups=relation_groups, comm=comm)
    ps.barrier()  # no rank trains on while another still reads the rows it evaluated
    return result


def capped(triples: np.ndarray, config: KgeConfig) -> np.ndarray:
    """At most ``max_eval`` triples, a fixed random subset (the same on every rank)."""
    if not config.max_eval or len(triples) <= config.max_eval:
        return triples
    pick = np.random.default_rng([config.seed, 7]).choice(len(triples), config.max_eval,
                                                          replace=False)
    return triples[np.sort(pick)]


# ----- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(ps, config: KgeConfig, comm, *, epoch: int, position: int, num_train: int,
                    history: list, seconds: float, fingerprint: dict) -> Path:
    """Collective: a sharded checkpoint in out/checkpoints (``jaxps.save_checkpoint``).

    ``epoch``: epochs completed; ``position``: entries of epoch + 1's permutation already
    trained (0 at an epoch boundary). The step is the number of training triples consumed,
    which orders checkpoints whatever the rank count.
    """
    meta = checkpoint_meta(config, epoch=epoch, position=position, history=history,
                           seconds=seconds, fingerprint=fingerprint)
    return jaxps.save_checkpoint(ps, checkpoint_root(config), step=epoch * num_train + position,
                                 meta=meta, keep=config.keep_checkpoints, comm=comm)


def checkpoint_meta(config: KgeConfig, *, epoch: int, position: int, history: list,
                    seconds: float, fingerprint: dict) -> dict:
    """What a resumable checkpoint's manifest holds: those of out/checkpoints and of
    out/best alike, so that a run can continue from either (train/common/resume.py)."""
    return {"entrypoint": "train.kge", "epoch": epoch, "position": position,
            "history": history, "seconds": seconds, "config": dataclasses.asdict(config),
            "fingerprint": fingerprint,
            "rng": "numpy default_rng([seed, epoch]) permutes the epoch; each batch draws from "
                   "default_rng([seed, epoch, rank, size, position of the batch])"}


def export_embeddings(ps, out: Path, dataset: KgeDataset, widths: dict, *,
                      chunk: int = 1 << 16) -> list[str]:
    """Rank 0: entity/relation embeddings as .npy plus id maps (one name per line).

    With reciprocal relations, relation_embeddings.npy holds the forward rows and
    reciprocal_relation_embeddings.npy the inverse ones (row i: the inverse of relation i).
    Each file is written atomically, pulled chunk by chunk (no whole-table copy in memory).
    Returns the names of the files written.
    """
    written = []
    for table, names in (("entity", dataset.entity_ids), ("relation", dataset.relation_ids)):
        n_keys, w = ps.tables[table].num_keys, widths[table]
        parts = [(f"{table}_embeddings.npy", 0, len(names))]
        if n_keys > len(names):
            parts.append((f"reciprocal_{table}_embeddings.npy", len(names), n_keys))
        for file, a, b in parts:
            rows = (ps.pull(table, np.arange(x, min(x + chunk, b)))[:, :w]
                    for x in range(a, b, chunk))
            outputs.write_npy(out / file, (b - a, w), rows)
            written.append(file)
        outputs.write_text(out / f"{table}_ids.txt", "".join(f"{x}\n" for x in names))
        written.append(f"{table}_ids.txt")
    return written


def _out_bytes(tables: dict, widths: dict) -> int:
    """Disk space a run needs in --out: the embeddings plus one checkpoint, and a margin."""
    exports = sum(spec.num_keys * widths[t] * 4 for t, spec in tables.items())
    checkpoint = sum(spec.num_keys * (spec.width * 4 + 8) for spec in tables.values())
    return exports + checkpoint + (1 << 20)


# ----- the run -------------------------------------------------------------------------------


def _short(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    keep = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "num_triples")
    short = {k: metrics[k] for k in keep if k in metrics} | {
        d: {k: metrics[d][k] for k in keep if k in metrics[d]} for d in ("head", "tail")}
    if "by_relation_type" in metrics:
        short["by_relation_type"] = metrics["by_relation_type"]
    return short


def run(config: KgeConfig, comm: MPI.Comm | None = None) -> dict:
    """Train and evaluate as configured; returns the summary (also written to out/).

    Every check that can fail runs before training, where a failure fails every rank with
    its message (call it through ``jaxps.run_main`` so that any later error ends the job).
    SIGINT/SIGTERM stop all ranks at a common batch, write a checkpoint (with --out) and
    raise ``jaxps.JobExit`` (status 3) saying where it is.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    say = print if rank == 0 else (lambda *a, **k: None)
    model = models.get_model(config.model)
    out = Path(config.out) if config.out else None
    if out is not None:  # before the dataset: an unusable --out fails in seconds
        jaxps.run_on_root(lambda: outputs.check_out_dir(out, 0), comm=comm)
    dataset = load(config, comm)
    train = train_types.training_units(dataset.splits["train"], dataset.num_relations, config)
    unseen = dataset.unseen_counts()
    say(f"dataset {dataset.name}: {dataset.num_entities} entities, {dataset.num_relations} "
        f"relations, " + ", ".join(
            f"{k} {len(v)}" + (f" ({unseen[k]} with an entity or relation unseen in train)"
                               if unseen.get(k) else "") for k, v in dataset.splits.items())
        + (f"; missing: {', '.join(dataset.missing_splits)} (no metrics for them)"
           if dataset.missing_splits else "") + f"; {size} rank(s)", flush=True)
    tables, optimizers = make_tables(model, dataset, config)
    widths = {t: spec.dim for t, spec in tables.items()}
    fingerprint = dataset_fingerprint(dataset)
    if out is not None:
        jaxps.run_on_root(lambda: outputs.check_out_dir(out, _out_bytes(tables, widths)),
                          comm=comm)
    init_rows = None if not config.init_embeddings else init_embeddings.prepare(
        config.init_embeddings, dataset, widths, reciprocal=config.reciprocal,
        how=f"--model {config.model} --dim {config.dim}", comm=comm)
    resume_from, manifest, notes = None, None, []
    if out is not None:
        def find():
            path = find_checkpoint(config)
            if path is None:
                return None, None, []
            m = jaxps.read_manifest(path)
            return path, m, check_compatible(m, config, fingerprint, path)
        resume_from, manifest, notes = jaxps.run_on_root(find, comm=comm)
        if config.resume and resume_from is None:
            say(f"--resume auto: no checkpoint in {checkpoint_root(config)}; starting afresh")
    filter_index = build_filter(*filter_sets(dataset.splits, config.filter),
                                num_entities=dataset.num_entities,
                                num_relations=dataset.num_relations)
    valid = capped(dataset.splits["valid"], config) if "valid" in dataset.splits else None
    test = capped(dataset.splits["test"], config) if "test" in dataset.splits else None
    say(report.eval_setup(config.filter, {s: (len(t), len(dataset.splits[s])) for s, t in
                                          (("valid", valid), ("test", test)) if t is not None}))
    scorers = scorers_for(model, config)
    schedule = LrSchedule(config, num_batches(len(train), config, 0, size))
    best = early.BestTracker(config.patience, config.min_delta, out)

    def best_meta(epoch: int, upto: list[dict]) -> dict:  # resumable: --resume out/best/step-N
        return checkpoint_meta(config, epoch=epoch, position=0, history=upto,
                               seconds=elapsed(), fingerprint=fingerprint)

    stopped_why = f"--epochs {config.epochs} trained"
    history: list[dict] = []
    train_stats: dict = {}
    prior_seconds, first, start = 0.0, 1, 0
    interrupted, summary = None, None
    stop = StopRequest(comm)
    stop.install()
    try:
        with ParameterServer(tables, technique=technique_for(config, dataset), comm=comm,
                             **ps_options(config.peer_timeout)) as ps:
            if resume_from is not None:
                meta, history = restore(ps, resume_from, notes, describe, comm=comm, say=say)
                prior_seconds = float(meta.get("seconds", 0.0))
                first, start = meta["epoch"] + 1, int(meta.get("position", 0))
                schedule.replay(history)
                best.replay(history)
                if out is not None and rank == 0:
                    outputs.write_jsonl(out / "metrics.jsonl", history)
            elif config.init_embeddings:
                init_embeddings.apply(ps, init_rows, widths)
                say(f"embeddings initialized from {config.init_embeddings}")
            trainer = SparseTrainer(ps, make_loss(model, config), optimizers,
                                    lookahead=config.lookahead,
                                    steps_per_call=config.steps_per_call,
                                    max_keys=max_keys(config, dataset))
            if trainer.device is not None:  # this rank's GPU: evaluation runs there too
                jax.config.update("jax_default_device", trainer.device)
            example = next(epoch_batches(train, dataset.num_entities, config, first, rank,
                                         size, num_relations=dataset.num_relations), None)
            if example is not None:  # compiled here, so that no epoch stalls for it
                trainer.compile(example)
            elapsed = lambda: prior_seconds + time.perf_counter() - t_start
            for epoch in range(first, config.epochs + 1):
                stopped: list = []
                m = _train_epoch(trainer, train, dataset, config, epoch, rank, size,
                                 start=start, stop=stop, stopped=stopped,
                                 lr_scale=schedule.scale(epoch, start // (config.batch_size
                                                                          * size)))
                # mpi4py's pickle-based reductions (comm.allreduce of Python objects) hold
                # the GIL while they wait, so this rank's PS thread cannot serve its peers:
                # reduce only once no rank needs PS service any more (see README).
                ps.barrier()
                stats = global_stats(m.ps, comm)
                for k, v in stats.items():
                    if k != "local_fraction":
                        train_stats[k] = train_stats.get(k, 0) + v
                seconds = comm.allreduce(m.seconds, op=MPI.MAX)
                examples = comm.allreduce(m.examples)
                record = {"epoch": epoch, "loss": comm.allreduce(m.loss * m.examples) /
                          max(examples, 1), "examples": examples, "seconds": seconds,
                          "examples_per_s": examples / max(seconds, 1e-9),
                          "compiles": m.compiles, "local_fraction": stats["local_fraction"],
                          "ps": stats}
                record["lr"] = schedule.lr(epoch)
                if start:
                    record["from_position"] = start
                if stopped:
                    position = min(start + stopped[0] * config.batch_size * size, len(train))
                    record["to_position"] = position
                    # Not in the checkpoint's history: the resumed run writes the epoch's line.
                    interrupted = _interrupt(ps, config, comm, stop, epoch - 1, position,
                                             len(train), history, elapsed(), fingerprint, out)
                    break
                start = 0
                if valid is not None and config.eval_every and epoch % config.eval_every == 0 \
                        and epoch != config.epochs:
                    record["valid"] = _short(run_evaluation(ps, scorers, widths, valid,
                                                            filter_index, config, comm))
                    schedule.observe(record["valid"]["mrr"])
                    if best.observe(epoch, record["valid"]["mrr"]):
                        best.save(ps, epoch, best_meta(epoch, history + [record]), comm)
                history.append(record)
                say(report.epoch_line(record, config.epochs, history, config.lr, first), flush=True)
                if out is not None and rank == 0:
                    outputs.write_jsonl(out / "metrics.jsonl", history)
                if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                    save_checkpoint(ps, config, comm, epoch=epoch, position=0,
                                    num_train=len(train), history=history, seconds=elapsed(),
                                    fingerprint=fingerprint)
                if best.should_stop():  # the same MRR on every rank: all stop here
                    stopped_why = best.reason()
                    say(stopped_why, flush=True)
                    break
                if epoch < config.epochs and stop.agreed():
                    interrupted = _interrupt(ps, config, comm, stop, epoch, 0, len(train),
                                             history, elapsed(), fingerprint, out)
                    break
            if interrupted is None:
                summary = _finish(ps, config, comm, dataset, scorers, widths, valid, test,
                                  filter_index, history, train_stats, unseen, resume_from,
                                  elapsed, t_start, out, best=(best, best_meta, stopped_why))
    finally:
        stop.uninstall()
    if interrupted is not None:
        # Outside the PS block: every rank raises it together, so nothing needs aborting.
        raise jaxps.JobExit(3, interrupted)
    return summary


def _finish(ps, config, comm, dataset, scorers, widths, valid, test, filter_index, history,
            train_stats, unseen, resume_from, elapsed, t_start, out, *, best) -> dict:
    """Final evaluation (of the best epoch's model, train/kge/early.py), the results table,
    then summary.json and the exports (rank 0)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    tracker, best_meta, stopped_why = best
    types = relation_types(dataset.splits["train"], dataset.num_relations)
    final, note = early.final_metrics(
        tracker, ps, lambda t: _short(run_evaluation(ps, scorers, widths, t, filter_index,
                                                     config, comm, relation_groups=types)),
        valid, test, history, best_meta, comm)
    if note:
        say(note, flush=True)
    pulls = train_stats.get("pull_local", 0) + train_stats.get("pull_remote", 0)
    train_stats["local_fraction"] = (train_stats.get("pull_local", 0) / pulls
                                     if pulls else 1.0)
    summary = {"valid": final.get("valid"), "test": final.get("test"),
               "epochs": config.epochs, "seconds": elapsed(),
               "seconds_this_run": time.perf_counter() - t_start,
               "resumed_from": str(resume_from) if resume_from else None,
               "ps": train_stats, "ranks": size, "dataset": dataset.name,
               "unseen": unseen, "config": dataclasses.asdict(config),
               "split_sizes": {s: len(t) for s, t in dataset.splits.items()},
               "relation_types": type_counts(types),
               "data_folder": str(dataset.folder.resolve()) if dataset.folder else None,
               "epochs_trained": history[-1]["epoch"] if history else 0,
               "best_epoch": tracker.best_epoch, "best_restored": tracker.restored,
               "stopped": stopped_why}
    if history:
        summary["last_epoch"] = {k: history[-1][k]
                                 for k in ("loss", "examples_per_s", "compiles")}
    # The results first: a failing export (disk full) must not lose them.
    say(report.results_table(summary), flush=True)
    ps.wait_sync()
    if out is not None and rank == 0:
        outputs.write_json(out / "summary.json", summary)
        summary["exports"] = export_embeddings(ps, out, dataset, widths)
        outputs.write_json(out / "summary.json", summary)
    ps.barrier()
    return summary


def _interrupt(ps, config, comm, stop, epoch, position, num_train, history, seconds,
               fingerprint, out) -> None:
    """Collective after a stop request: write a checkpoint (with --out); returns the message."""
    where = f"epoch {epoch}" + (f" + {position} of {num_train} triples of epoch {epoch + 1}"
                                if position else "")
    if out is None:
        return f"interrupted after {where}; no checkpoint written (pass --out DIR to get one)"
    path = save_checkpoint(ps, config, comm, epoch=epoch, position=position,
                           num_train=num_train, history=history, seconds=seconds,
                           fingerprint=fingerprint)
    if comm.Get_rank() == 0:
        outputs.write_jsonl(out / "metrics.jsonl", history)
    return (f"interrupted ({stop.signal_name or 'signal on another rank'}) after {where}: "
            f"checkpoint written to {path}; continue with --resume")


def _train_epoch(trainer, train, dataset, config, epoch, rank, size, *, start=0, stop=None,
                 stopped=None, lr_scale=1.0):
    bar = None
    if rank == 0 and config.progress:
        bar = EpochProgress(num_batches(len(train), config, rank, size, start), f"epoch {epoch}")
    try:
        pool = ((lambda: trainer.ps.owned_keys("entity"))
                if config.sampling == "local" and size > 1 else None)
        batches = epoch_batches(train, dataset.num_entities, config, epoch, rank, size, pool,
                                num_relations=dataset.num_relations, start=start)
        if stop is not None:
            common = num_batches(len(train), config, size - 1, size, start)
            batches = stop.batches(batches, common, stopped)
        return trainer.train_epoch(
            batches, lr_scale=lr_scale,
            on_batch=None if bar is None else (lambda n, loss: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
