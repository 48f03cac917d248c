"""MF training on the parameter server: tables, loss, the epoch loop over a schedule's sub-epochs.

Tables: "user" [num_users, dim + 1] and "item" [num_items, dim + 1] (factors | bias), each
row followed by its optimizer state. An epoch is the schedule's list of sub-epochs
(``train/mf/schedules.py``); each runs as one ``SparseTrainer.train_epoch``. Before a
sub-epoch that names keys to localize (dsgd), all ranks meet in a PS barrier (the previous
block is finished everywhere) and then move the new column block here; both happen in this
(the training) thread, at exactly the sub-epoch boundary.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from mpi4py import MPI

import jaxps
from jaxps import ParameterServer, SparseTrainer, TableSpec
from models import mf
from train.kge.train import read_table, write_table
from train.mf import schedules
from train.mf.config import MfConfig, parse_fractions, parse_range
from train.mf.data import RatingsDataset, load_files, load_single
from train.mf.evaluate import evaluate
from train.mf.optim import make_optimizer
from train.mf.synthetic import load_synthetic

TABLES = ("user", "item")
_COMPILE_SECONDS = [0.0]  # JAX's tracing, lowering and XLA compile time in this process


def _on_jax_event(event: str, duration: float, **kwargs) -> None:
    if event.startswith("/jax/core/compile/"):
        _COMPILE_SECONDS[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
_GAUGES = ("local_fraction", "max_staleness", "replicas")  # ps.stats() values that are no counters


# ----- data ----------------------------------------------------------------------------------
def load(config: MfConfig, comm: MPI.Comm) -> RatingsDataset:
    """The ratings of ``config`` (every rank reads them; a bad file fails on every rank)."""
    fractions, rating_range = parse_fractions(config.split), parse_range(config.rating_range)
    if config.train:
        return load_files(config.train, config.valid, config.test,
                          valid_fraction=config.valid_fraction, rating_range=rating_range,
                          seed=config.seed)
    spec = config.data or (f"synthetic:rows={config.synthetic_rows},"
                           f"cols={config.synthetic_cols},cells={config.synthetic_cells}")
    if spec.startswith("synthetic:"):
        return load_synthetic(spec, fractions, comm=comm)
    return load_single(spec, fractions, rating_range=rating_range, seed=config.seed)


# ----- model pieces --------------------------------------------------------------------------
def make_loss(mean: float, reg: float):
    """Pure JAX ``(rows, data) -> scalar`` for SparseTrainer.

    The gradient is that of the *summed* per-rating loss (each row gets the sum of its
    per-rating SGD gradients, as in Surprise and the reference MF task: the step size does
    not shrink with the batch size); the value is the mean per rating, for reporting.
    """

    def loss_fn(rows, data):
        total = mf.batch_loss(rows, data, mean=mean, reg=reg)
        per_rating = total / jax.numpy.maximum(jax.numpy.sum(data["w"]), 1.0)
        return total - jax.lax.stop_gradient(total - per_rating)

    return loss_fn


def make_tables(dataset: RatingsDataset, config: MfConfig):
    """TableSpecs and row optimizers of the "user" and "item" tables."""
    opt = make_optimizer(config.optimizer, config.lr)
    width = mf.row_width(config.dim)
    sizes = {"user": dataset.num_users, "item": dataset.num_items}
    tables = {t: TableSpec(n, width, init="normal", init_scale=config.init_scale,
                           state_dim=opt.state_dim(width), state_init=opt.state_init,
                           seed=config.seed) for t, n in sizes.items()}
    return tables, {t: opt for t in tables}


def technique_for(config: MfConfig, dataset: RatingsDataset):
    """The PS technique; "nups" replicates the 1% most frequent items, relocates the rest."""
    if config.technique != "nups":
        return config.technique
    counts = np.bincount(dataset.splits["train"].items, minlength=dataset.num_items)
    hot = np.argsort(-counts, kind="stable")[:max(1, dataset.num_items // 100)]
    return jaxps.Nups(hot_keys={"item": np.sort(hot)})


# ----- checkpoints (as train.kge's, for both tables) -----------------------------------------
def save_checkpoint(ps, out: Path, epoch: int, config: MfConfig, comm) -> None:
    """Collective: rank 0 writes out/checkpoint.npz (whole rows incl. optimizer state)."""
    ps.wait_sync()
    if comm.Get_rank() == 0:
        tmp = out / "checkpoint.tmp.npz"
        np.savez(tmp, **{t: read_table(ps, t) for t in TABLES}, epoch=epoch,
                 config=json.dumps(dataclasses.asdict(config)))
        tmp.replace(out / "checkpoint.npz")
    ps.barrier()


def load_checkpoint(ps, out: Path, comm) -> int:
    """Collective: restore the tables from out/checkpoint.npz; returns its epoch (0: none).

    Every rank reads the file's header, so a mismatch fails on every rank alike.
    """
    path = out / "checkpoint.npz"
    if not path.is_file():
        return 0
    with np.load(path) as ckpt:
        for table in TABLES:
            want = (ps.tables[table].num_keys, ps.tables[table].width)
            if ckpt[table].shape != want:
                raise ValueError(f"{path}: table {table!r} has shape {ckpt[table].shape}, "
                                 f"this run needs {want}; resume with the same data, --dim "
                                 "and --optimizer")
        if comm.Get_rank() == 0:
            for table in TABLES:
                write_table(ps, table, ckpt[table])
        epoch = int(ckpt["epoch"])
    ps.wait_sync()
    return epoch


def export_factors(ps, out: Path, dataset: RatingsDataset, config: MfConfig) -> None:
    """Rank 0: {user,item}_factors.npy [n, dim], {user,item}_bias.npy [n], id maps
    ({user,item}_ids.txt, one original id per line) and model.json (mean, rating range)."""
    for table, ids in (("user", dataset.user_ids), ("item", dataset.item_ids)):
        rows = read_table(ps, table, columns=config.dim + 1)
        np.save(out / f"{table}_factors.npy", rows[:, :-1])
        np.save(out / f"{table}_bias.npy", rows[:, -1])
        (out / f"{table}_ids.txt").write_text("".join(f"{x}\n" for x in ids.tolist()),
                                              encoding="utf-8")
    (out / "model.json").write_text(json.dumps(
        {"model": "biased-mf", "mean": dataset.mean, "rating_range": dataset.rating_range,
         "dim": config.dim, "predict": "mean + user_bias[u] + item_bias[i] + "
         "user_factors[u] @ item_factors[i], clipped to rating_range"}, indent=2) + "\n")


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


def train_epoch(trainer: SparseTrainer, sub_epochs: list, dataset, config, bar=None) -> dict:
    """One epoch on this rank: every sub-epoch (``Schedule.epoch``); returns this rank's counts.

    Collective when a sub-epoch localizes (dsgd): every rank has the same number of them.
    """
    ps, train = trainer.ps, dataset.splits["train"]
    t0 = time.perf_counter()
    before = ps.stats()  # around everything: localize's moves and waits count too
    loss_sum, examples, batches, compiles = 0.0, 0, 0, trainer.compiles
    for sub in sub_epochs:
        if sub.localize is not None:
            ps.barrier()  # the previous column block is finished on every rank
            ps.localize("item", sub.localize)
        m = trainer.train_epoch(
            schedules.batches(train, sub.cells, config.batch_size, dataset.num_users,
                              dataset.num_items),
            on_batch=None if bar is None else (lambda n, loss: bar.update(1)))
        if m.examples:
            loss_sum += m.loss * m.examples
        examples += m.examples
        batches += m.batches
        compiles = m.compiles
    after = ps.stats()
    ps_stats = {k: v - before.get(k, 0) for k, v in after.items()
                if isinstance(v, (int, float)) and k not in _GAUGES}
    return {"loss_sum": loss_sum, "examples": examples, "batches": batches,
            "compiles": compiles, "ps": ps_stats, "seconds": time.perf_counter() - t0}


def run(config: MfConfig, comm: MPI.Comm | None = None) -> dict:
    """Train and evaluate as configured; returns the summary (also written to out/)."""
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    dataset = load(config, comm)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"ratings {dataset.name}: {dataset.num_users} users, {dataset.num_items} items, "
        + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items())
        + f"; range {dataset.rating_range[0]:g}..{dataset.rating_range[1]:g}; mean "
        f"{dataset.mean:.3f}; {size} rank(s), schedule {config.schedule}, technique "
        f"{config.technique}", flush=True)
    out = Path(config.out) if config.out else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)  # only after the data was read successfully
    tables, optimizers = make_tables(dataset, config)
    width = mf.row_width(config.dim)
    schedule = schedules.Schedule(dataset.splits["train"], dataset.num_users,
                                  dataset.num_items, config.schedule, rank=rank, size=size,
                                  seed=config.seed)
    scoring = {"mean": dataset.mean, "rating_range": dataset.rating_range, "width": width,
               "comm": comm}
    history: list[dict] = []
    train_stats: dict = {}
    train_seconds, compile0 = 0.0, _COMPILE_SECONDS[0]
    with ParameterServer(tables, technique=technique_for(config, dataset), comm=comm) as ps:
        first = load_checkpoint(ps, out, comm) + 1 if config.resume else 1
        if out is not None and rank == 0 and first > 1 and (out / "metrics.jsonl").is_file():
            lines = (out / "metrics.jsonl").read_text().splitlines()
            history = [m for m in map(json.loads, lines) if m["epoch"] < first]
        trainer = SparseTrainer(ps, make_loss(dataset.mean, config.reg), optimizers,
                                lookahead=config.lookahead)
        for epoch in range(first, config.epochs + 1):
            bar, sub_epochs = None, schedule.epoch(epoch)
            if rank == 0 and config.progress:
                from tqdm import tqdm
                bar = tqdm(total=schedules.num_batches(sub_epochs, config.batch_size),
                           desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=0.5)
            try:
                m = train_epoch(trainer, sub_epochs, dataset, config, bar)
            finally:
                if bar is not None:
                    bar.close()
            # Pickle-based reductions hold the GIL while waiting: only after a PS barrier.
            ps.barrier()
            stats = _global_stats(m["ps"], comm)
            for k, v in stats.items():
                if k != "local_fraction":
                    train_stats[k] = train_stats.get(k, 0) + v
            seconds = comm.allreduce(m["seconds"], op=MPI.MAX)
            train_seconds += seconds
            examples = comm.allreduce(m["examples"])
            record = {"task": "mf", "epoch": epoch, "loss": comm.allreduce(m["loss_sum"]) / max(examples, 1),
                      "examples": examples, "seconds": seconds,
                      "examples_per_s": examples / max(seconds, 1e-9),
                      "compiles": m["compiles"], "local_fraction": stats["local_fraction"],
                      "ps": stats}
            if "valid" in dataset.splits and config.eval_every and \
                    epoch % config.eval_every == 0:
                ps.wait_sync()
                record["valid"] = evaluate(ps, dataset.splits["valid"], **scoring)
            history.append(record)
            say(_epoch_line(record, config), flush=True)
            if out is not None and rank == 0:
                _write_atomic(out / "metrics.jsonl",
                              "".join(json.dumps(h) + "\n" for h in history))
            if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                save_checkpoint(ps, out, epoch, config, comm)
        ps.wait_sync()
        final = {s: evaluate(ps, dataset.splits[s], **scoring)
                 for s in ("valid", "test") if s in dataset.splits}
        if out is not None and rank == 0:
            export_factors(ps, out, dataset, config)
        ps.barrier()
    pulls = train_stats.get("pull_local", 0) + train_stats.get("pull_remote", 0)
    train_stats["local_fraction"] = train_stats.get("pull_local", 0) / pulls if pulls else 1.0
    summary = {"valid": final.get("valid"), "test": final.get("test"),
               "epochs": config.epochs, "seconds": time.perf_counter() - t_start,
               "train_seconds": train_seconds,
               "compile_seconds": comm.allreduce(_COMPILE_SECONDS[0] - compile0, op=MPI.MAX),
               "ps": train_stats, "ranks": size,
               "dataset": dataset.name, "num_users": dataset.num_users,
               "num_items": dataset.num_items,
               "num_ratings": {s: len(r) for s, r in dataset.splits.items()},
               "config": dataclasses.asdict(config)}
    if history:
        summary["last_epoch"] = {k: history[-1][k] for k in ("loss", "examples_per_s", "compiles")}
    if rank == 0:
        say(_results_table(summary), flush=True)
        if out is not None:
            _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _epoch_line(r: dict, config: MfConfig) -> str:
    line = (f"epoch {r['epoch']:>3}/{config.epochs}  loss {r['loss']:.4f}  "
            f"{r['examples_per_s']:>9.0f} ratings/s  local {r['local_fraction']:.3f}  "
            f"compiles {r['compiles']}")
    if "valid" in r:
        line += f"  valid RMSE {r['valid']['rmse']:.4f}"
    return line


def _results_table(summary: dict) -> str:
    rows = [f"{'split':<6}{'rmse':>10}{'mae':>10}{'ratings':>10}"]
    for split in ("valid", "test"):
        m = summary[split]
        if m is not None:
            rows.append(f"{split:<6}{m['rmse']:>10.4f}{m['mae']:>10.4f}{m['num_ratings']:>10}")
    rows.append(f"{summary['epochs']} epochs in {summary['seconds']:.1f} s "
                f"({summary['train_seconds']:.1f} s training) on {summary['ranks']} rank(s); "
                f"local fraction of pulls {summary['ps']['local_fraction']:.3f}")
    return "\n".join(rows)
