"""KGE training on the parameter server: batches with shared negatives, loss, the epoch loop.

Tables: "entity" [num_entities, width] and "relation" [num_relations, width], each row
followed by its optimizer state. Each epoch, the training triples are shuffled (the same
permutation on every rank) and rank r takes every size-th triple starting at r. A batch is
``batch_size`` positives plus ``negatives`` entities drawn uniformly and shared by the whole
batch, used to corrupt both the head and the tail. Batches are built in the trainer's
background thread ahead of time, so the negatives of batch t+1 are drawn before batch t runs
and are part of its intent.
"""

from __future__ import annotations

import dataclasses
import json
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
from jaxps._src.row_optim import ROW_OPTIMIZERS
from train.kge import synthetic
from train.kge.config import KgeConfig
from train.kge.data import KgeDataset, load_dataset, user_cache_dir
from train.kge.evaluate import (Scorers, build_filter, count_unseen, evaluate,
                                reciprocal_scorers)

_SNAPSHOT_FLOATS = 1 << 28  # evaluation copies the entity table when it is at most 1 GiB
_MASKED = -1e30


# ----- data ----------------------------------------------------------------------------------
def load(config: KgeConfig, comm: MPI.Comm) -> KgeDataset:
    """The dataset of ``config.data``, or the default synthetic graph (generated on rank 0)."""
    if config.data:
        from train.kge.datasets import resolve
        return load_dataset(resolve(config.data))
    n, r, m = config.synthetic_entities, config.synthetic_relations, config.synthetic_triples
    # The cluster count is part of the name: graphs cached before its default changed differ.
    k = synthetic.default_num_clusters(n)
    folder = user_cache_dir() / "synthetic" / f"e{n}-r{r}-t{m}-c{k}-s{config.seed}"
    if comm.Get_rank() == 0 and not (folder / "test.txt").is_file():
        # Written aside and renamed: a concurrent run never reads a half-written folder.
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        synthetic.write_dataset(tmp, synthetic.generate(n, r, m, seed=config.seed))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    comm.Barrier()
    return load_dataset(folder)


def epoch_batches(train: np.ndarray, num_entities: int, config: KgeConfig, epoch: int,
                  rank: int, size: int, local_pool=None, *, num_relations: int = 0):
    """This rank's batches of one epoch: ``Batch(keys, data)``; data indexes rows by position.

    data: s, p, o int32 [B] positions; neg int32 [K] positions; weight float32 [B] (0 pads
    the last batch to the same shape, so the step never recompiles for it); seed uint32
    (dropout); with ``config.reciprocal`` also p_inv int32 [B], the positions of the inverse
    relations' rows (key p + num_relations). ``local_pool``: ``() -> entity keys held here``,
    for local sampling.
    """
    if config.reciprocal and num_relations < 1:
        raise ValueError("epoch_batches: --reciprocal needs num_relations (the inverse of "
                         "relation p is row p + num_relations)")
    perm = np.random.default_rng([config.seed, epoch]).permutation(len(train))
    mine = train[perm[rank::size]]
    rng = np.random.default_rng([config.seed, epoch, rank, 1])
    b = config.batch_size
    all_entities = config.negatives >= num_entities
    pool = None
    for index, start in enumerate(range(0, len(mine), b)):
        part = mine[start:start + b]
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
        yield Batch(keys, data, len(mine[start:start + b]))


def num_batches(num_train: int, config: KgeConfig, rank: int, size: int) -> int:
    return math.ceil(len(range(rank, num_train, size)) / config.batch_size)


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

    def loss_fn(rows, data):
        ent, rel = rows["entity"], rows["relation"]
        s, p, o, neg = ent[data["s"]], rel[data["p"]], ent[data["o"]], ent[data["neg"]]
        # Reciprocal: the head query (?, p, o) is the tail query (o, p^-1, ?) of its own row.
        p_inv = rel[data["p_inv"]] if config.reciprocal else p
        if config.dropout:
            key = jax.random.PRNGKey(data["seed"])
            keep = 1.0 - config.dropout
            s, p, o, p_inv = (jnp.where(jax.random.bernoulli(k, keep, x.shape), x / keep, 0.0)
                              for k, x in zip(jax.random.split(key, 4), (s, p, o, p_inv)))
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
        opt = ROW_OPTIMIZERS[config.optimizer](config.lr)
    widths = {"entity": model.entity_width(config.dim), "relation": model.relation_width(config.dim)}
    sizes = {"entity": dataset.num_entities,
             "relation": dataset.num_relations * (2 if config.reciprocal else 1)}
    tables = {t: TableSpec(sizes[t], widths[t], init="normal", init_scale=config.init_scale,
                           state_dim=opt.state_dim(widths[t]), state_init=opt.state_init,
                           seed=config.seed) for t in sizes}
    return tables, {t: opt for t in tables}


def max_keys(config: KgeConfig, dataset: KgeDataset) -> dict:
    """The most unique keys one batch of ``epoch_batches`` touches per table (heads, tails
    and negatives; relations and their inverses): SparseTrainer pads every batch to these,
    so the step compiles once, before the first epoch."""
    relation_rows = dataset.num_relations * (2 if config.reciprocal else 1)
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


def write_table(ps: ParameterServer, table: str, rows: np.ndarray, *, chunk: int = 1 << 16):
    for a in range(0, len(rows), chunk):
        ps.set(table, np.arange(a, min(a + chunk, len(rows))), rows[a:a + chunk])


def scorers_for(model: models.KgeModel, config: KgeConfig) -> Scorers:
    """The evaluation scorers; with --reciprocal, relation rows are read as [p | p^-1]."""
    if config.reciprocal:
        return reciprocal_scorers(model.score_sp_)
    return Scorers(model.score_sp_, model.score__po)


def run_evaluation(ps, scorers: Scorers, widths, triples, filter_index, config, comm) -> dict:
    """Filtered ranking metrics of ``triples``; collective over ``comm`` (ranks split queries)."""
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
                      score__po=scorers.score__po, batch_size=config.eval_batch_size, comm=comm)
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
def save_checkpoint(ps, out: Path, epoch: int, config: KgeConfig, comm) -> None:
    """Collective: rank 0 writes out/checkpoint.npz (whole rows incl. optimizer state)."""
    ps.wait_sync()
    if comm.Get_rank() == 0:
        tmp = out / "checkpoint.tmp.npz"
        np.savez(tmp, entity=read_table(ps, "entity"), relation=read_table(ps, "relation"),
                 epoch=epoch, config=json.dumps(dataclasses.asdict(config)))
        tmp.replace(out / "checkpoint.npz")
    ps.barrier()


def load_checkpoint(ps, out: Path, comm) -> int:
    """Collective: restore the tables from out/checkpoint.npz; returns its epoch (0: none)."""
    path = out / "checkpoint.npz"
    if not path.is_file():
        return 0
    epoch = 0
    if comm.Get_rank() == 0:
        with np.load(path) as ckpt:
            for table in ("entity", "relation"):
                want = (ps.tables[table].num_keys, ps.tables[table].width)
                if ckpt[table].shape != want:
                    raise ValueError(f"{path}: table {table!r} has shape {ckpt[table].shape}, "
                                     f"this run needs {want}; resume with the same --data, "
                                     "--model, --dim, --optimizer and --[no-]reciprocal")
                write_table(ps, table, ckpt[table])
            epoch = int(ckpt["epoch"])
    ps.wait_sync()
    return comm.bcast(epoch, root=0)


def export_embeddings(ps, out: Path, dataset: KgeDataset, widths: dict) -> None:
    """Rank 0: entity/relation embeddings as .npy plus id maps (one name per line).

    With reciprocal relations, relation_embeddings.npy holds the forward rows and
    reciprocal_relation_embeddings.npy the inverse ones (row i: the inverse of relation i).
    """
    for table, names in (("entity", dataset.entity_ids), ("relation", dataset.relation_ids)):
        rows = read_table(ps, table, columns=widths[table])
        np.save(out / f"{table}_embeddings.npy", rows[:len(names)])
        if len(rows) > len(names):
            np.save(out / f"reciprocal_{table}_embeddings.npy", rows[len(names):])
        (out / f"{table}_ids.txt").write_text("".join(f"{x}\n" for x in names), encoding="utf-8")


# ----- the run -------------------------------------------------------------------------------
def _global_stats(stats: dict, comm) -> dict:
    """This epoch's PS counters summed over the ranks (which may report different keys)."""
    total: dict = {}
    for part in comm.allgather(stats):
        for k, v in part.items():
            if k != "local_fraction":
                total[k] = total.get(k, 0) + v
    pulls = total.get("pull_local", 0) + total.get("pull_remote", 0)
    total["local_fraction"] = total.get("pull_local", 0) / pulls if pulls else 1.0
    return total


def _short(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    keep = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "num_triples")
    return {k: metrics[k] for k in keep if k in metrics} | {
        d: {k: metrics[d][k] for k in keep if k in metrics[d]} for d in ("head", "tail")}


def run(config: KgeConfig, comm: MPI.Comm | None = None) -> dict:
    """Train and evaluate as configured; returns the summary (also written to out/)."""
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    model = models.get_model(config.model)
    dataset = load(config, comm)
    train = dataset.splits["train"]
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"dataset {dataset.name}: {dataset.num_entities} entities, {dataset.num_relations} "
        f"relations, " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items())
        + (f"; missing: {', '.join(dataset.missing_splits)} (no metrics for them)"
           if dataset.missing_splits else "") + f"; {size} rank(s)", flush=True)
    filter_index = build_filter(*dataset.splits.values(), num_entities=dataset.num_entities,
                                num_relations=dataset.num_relations)
    valid = capped(dataset.splits["valid"], config) if "valid" in dataset.splits else None
    test = capped(dataset.splits["test"], config) if "test" in dataset.splits else None
    out = Path(config.out) if config.out else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    tables, optimizers = make_tables(model, dataset, config)
    widths = {t: spec.dim for t, spec in tables.items()}
    scorers = scorers_for(model, config)
    history: list[dict] = []
    train_stats: dict = {}
    with ParameterServer(tables, technique=technique_for(config, dataset), comm=comm) as ps:
        first = load_checkpoint(ps, out, comm) + 1 if config.resume else 1
        if out is not None and rank == 0 and first > 1 and (out / "metrics.jsonl").is_file():
            lines = (out / "metrics.jsonl").read_text().splitlines()
            history = [m for m in map(json.loads, lines) if m["epoch"] < first]
        trainer = SparseTrainer(ps, make_loss(model, config), optimizers,
                                lookahead=config.lookahead, max_keys=max_keys(config, dataset))
        example = next(epoch_batches(train, dataset.num_entities, config, 1, rank, size,
                                     num_relations=dataset.num_relations), None)
        if example is not None:  # compiled here, so that no epoch stalls for it
            trainer.compile(example)
        for epoch in range(first, config.epochs + 1):
            m = _train_epoch(trainer, train, dataset, config, epoch, rank, size)
            # mpi4py's pickle-based reductions (comm.allreduce of Python objects) hold the
            # GIL while they wait, so this rank's PS thread cannot serve its peers: reduce
            # only once no rank needs PS service any more (see README, "Known limits").
            ps.barrier()
            stats = _global_stats(m.ps, comm)
            for k, v in stats.items():
                if k != "local_fraction":
                    train_stats[k] = train_stats.get(k, 0) + v
            seconds = comm.allreduce(m.seconds, op=MPI.MAX)
            record = {"epoch": epoch, "loss": comm.allreduce(m.loss * m.examples) /
                      max(comm.allreduce(m.examples), 1),
                      "examples": comm.allreduce(m.examples), "seconds": seconds,
                      "examples_per_s": comm.allreduce(m.examples) / max(seconds, 1e-9),
                      "compiles": m.compiles, "local_fraction": stats["local_fraction"],
                      "ps": stats}
            if valid is not None and config.eval_every and epoch % config.eval_every == 0 \
                    and epoch != config.epochs:
                record["valid"] = _short(run_evaluation(ps, scorers, widths, valid,
                                                        filter_index, config, comm))
            history.append(record)
            say(_epoch_line(record, config), flush=True)
            if out is not None and rank == 0:
                (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
            if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                save_checkpoint(ps, out, epoch, config, comm)
        final = {}
        for split, triples in (("valid", valid), ("test", test)):
            if triples is not None:
                final[split] = _short(run_evaluation(ps, scorers, widths, triples, filter_index,
                                                     config, comm))
        ps.wait_sync()
        if out is not None and rank == 0:
            export_embeddings(ps, out, dataset, widths)
        ps.barrier()
    pulls = train_stats.get("pull_local", 0) + train_stats.get("pull_remote", 0)
    train_stats["local_fraction"] = train_stats.get("pull_local", 0) / pulls if pulls else 1.0
    summary = {"valid": final.get("valid"), "test": final.get("test"),
               "epochs": config.epochs, "seconds": time.perf_counter() - t_start,
               "ps": train_stats, "ranks": size, "dataset": dataset.name,
               "unseen": {s: count_unseen(t, train) for s, t in dataset.splits.items()
                          if s != "train"},
               "config": dataclasses.asdict(config)}
    if history:
        summary["last_epoch"] = {k: history[-1][k] for k in ("loss", "examples_per_s", "compiles")}
    if rank == 0:
        say(_results_table(summary), flush=True)
        if out is not None:
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_epoch(trainer, train, dataset, config, epoch, rank, size):
    bar = None
    if rank == 0 and config.progress:
        from tqdm import tqdm
        bar = tqdm(total=num_batches(len(train), config, rank, size), desc=f"epoch {epoch}",
                   unit="batch", leave=False, mininterval=0.5)
    try:
        pool = ((lambda: trainer.ps.owned_keys("entity"))
                if config.sampling == "local" and size > 1 else None)
        return trainer.train_epoch(
            epoch_batches(train, dataset.num_entities, config, epoch, rank, size, pool,
                          num_relations=dataset.num_relations),
            on_batch=None if bar is None else (lambda n, loss: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()


def _epoch_line(r: dict, config: KgeConfig) -> str:
    line = (f"epoch {r['epoch']:>3}/{config.epochs}  loss {r['loss']:.4f}  "
            f"{r['examples_per_s']:>9.0f} ex/s  local {r['local_fraction']:.3f}  "
            f"compiles {r['compiles']}")
    if "valid" in r:
        line += f"  valid MRR {r['valid']['mrr']:.4f}"
    return line


def _results_table(summary: dict) -> str:
    cols = ("mrr", "mr", "hits@1", "hits@3", "hits@10")
    rows = [f"{'split':<6}" + "".join(f"{c:>10}" for c in cols)]
    for split in ("valid", "test"):
        m = summary[split]
        if m is not None:
            rows.append(f"{split:<6}" + "".join(
                f"{m[c]:>10.1f}" if c == "mr" else f"{m[c]:>10.4f}" for c in cols))
    rows.append(f"{summary['epochs']} epochs in {summary['seconds']:.1f} s on "
                f"{summary['ranks']} rank(s); local fraction of pulls "
                f"{summary['ps']['local_fraction']:.3f}")
    return "\n".join(rows)
