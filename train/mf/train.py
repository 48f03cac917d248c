"""MF training on the parameter server: tables, loss, the epoch loop over a schedule's sub-epochs.

Tables: "user" [num_users, dim + 1] and "item" [num_items, dim + 1] (factors | bias), each
row followed by its optimizer state. An epoch is the schedule's list of sub-epochs
(``train/mf/schedules.py``); each runs as one ``SparseTrainer.train_epoch``. Before a
sub-epoch that names keys to localize (dsgd), all ranks meet in a PS barrier (the previous
block is finished everywhere) and then move the new column block here; both happen in this
(the training) thread, at exactly the sub-epoch boundary.

Reliability (docs/reliability.md, as train.kge): every check runs before training and fails
all ranks (rank-0-only work through ``jaxps.run_on_root``); checkpoints are sharded
(``jaxps.save_checkpoint``) and resumed only after the config and dataset were compared
(train/mf/resume.py, which also says where in an epoch a resumed run starts); SIGINT/SIGTERM
stop all ranks at a common point (train/common/interrupt.py); outputs are written atomically
(train/common/outputs.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from mpi4py import MPI

import jaxps
from jaxps import ParameterServer, SparseTrainer, TableSpec
from models import mf
from train.common import outputs
from train.common.interrupt import StopRequest
from train.common.launch import ps_options
from train.common.resume import restore
from train.common.stats import global_stats
from train.common.progress import EpochProgress
from train.mf import export, resume, schedules
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


# ----- data ----------------------------------------------------------------------------------
def load(config: MfConfig, comm: MPI.Comm) -> RatingsDataset:
    """The ratings of ``config`` on every rank of ``comm`` (collective).

    Rank 0 reads (or generates) them first and writes the binary cache, inside
    ``jaxps.run_on_root``: a bad file or spec fails every rank with rank 0's message, and no
    rank parses while another fails. Then every other rank loads them itself: from rank 0's
    cache where it sees that folder, else (another host, its own cache folder) by parsing or
    generating its own identical copy (the split and the generator are seeded).
    """
    mine: list = []
    jaxps.run_on_root(lambda: mine.append(_load(config)), comm=comm)
    return mine[0] if mine else _load(config)


def _load(config: MfConfig) -> RatingsDataset:
    fractions, rating_range = parse_fractions(config.split), parse_range(config.rating_range)
    if config.train:
        return load_files(config.train, config.valid, config.test,
                          valid_fraction=config.valid_fraction, rating_range=rating_range,
                          seed=config.seed)
    spec = config.data or (f"synthetic:rows={config.synthetic_rows},"
                           f"cols={config.synthetic_cols},cells={config.synthetic_cells}")
    if spec.startswith("synthetic:"):
        return load_synthetic(spec, fractions)
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


def max_keys(config: MfConfig, dataset: RatingsDataset) -> dict:
    """The most unique keys one batch touches per table (one user and one item per rating;
    padding repeats a cell): SparseTrainer pads every batch to these, so the step compiles
    once, before the first epoch."""
    return {"user": min(dataset.num_users, config.batch_size),
            "item": min(dataset.num_items, config.batch_size)}


# ----- the run -------------------------------------------------------------------------------


def train_epoch(trainer: SparseTrainer, sub_epochs: list, dataset, config, bar=None, *,
                stop: StopRequest | None = None, first_sub: int = 0, common: int = 0) -> dict:
    """One epoch on this rank: the sub-epochs ``first_sub``, ... (``Schedule.epoch``);
    returns this rank's counts, and where it stopped when the ranks agreed to stop
    (``stopped_batches``: shuffled, after that many batches; ``stopped_sub``: dsgd, before
    that sub-epoch). ``common``: the batches every rank has in a shuffled epoch (the ranks
    agree on a stop request only within those).

    Collective when a sub-epoch localizes (dsgd): every rank has the same number of them.
    """
    ps, train = trainer.ps, dataset.splits["train"]
    t0 = time.perf_counter()
    before = ps.stats()  # around everything: localize's moves and waits count too
    loss_sum, examples, batches, compiles = 0.0, 0, 0, trainer.compiles
    stopped_batches, stopped_sub = None, None
    for index in range(first_sub, len(sub_epochs)):
        sub = sub_epochs[index]
        if sub.localize is not None:
            ps.barrier()  # the previous column block is finished on every rank
            if index > first_sub and stop is not None and stop.agreed():
                stopped_sub = index  # a sub-epoch boundary: every rank is here
                break
            ps.localize("item", sub.localize)
        source = schedules.batches(train, sub.cells, config.batch_size, dataset.num_users,
                                   dataset.num_items)
        stopped: list = []
        if stop is not None and config.schedule == "shuffled":
            source = stop.batches(source, common, stopped)
        m = trainer.train_epoch(
            source, on_batch=None if bar is None else (lambda n, loss: bar.update(1)))
        if m.examples:
            loss_sum += m.loss * m.examples
        examples += m.examples
        batches += m.batches
        compiles = m.compiles
        if stopped:
            stopped_batches = stopped[0]
            break
    after = ps.stats()
    ps_stats = jaxps.stats_delta(before, after)
    return {"loss_sum": loss_sum, "examples": examples, "batches": batches,
            "compiles": compiles, "ps": ps_stats, "seconds": time.perf_counter() - t0,
            "stopped_batches": stopped_batches, "stopped_sub": stopped_sub}


def run(config: MfConfig, comm: MPI.Comm | None = None) -> dict:
    """Train and evaluate as configured; returns the summary (also written to out/).

    Every check that can fail runs before training, where a failure fails every rank with
    its message (call it through ``jaxps.run_main`` so that any later error ends the job).
    Nothing is written to --out before the ratings were read. SIGINT/SIGTERM stop all
    ranks at a common point (train/mf/resume.py says where), write a checkpoint (with
    --out) and raise ``jaxps.JobExit`` (status 3) saying where it is.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    say = print if rank == 0 else (lambda *a, **k: None)
    out = Path(config.out) if config.out else None
    if out is not None:  # a file in the way or a read-only parent fails in seconds
        jaxps.run_on_root(lambda: outputs.check_out_dir(out, 0, create=False), comm=comm)
    dataset = load(config, comm)
    train = dataset.splits["train"]
    say(f"ratings {dataset.name}: {dataset.num_users} users, {dataset.num_items} items, "
        + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items())
        + f"; range {dataset.rating_range[0]:g}..{dataset.rating_range[1]:g}; mean "
        f"{dataset.mean:.3f}; {size} rank(s), schedule {config.schedule}, technique "
        f"{config.technique}", flush=True)
    tables, optimizers = make_tables(dataset, config)
    fingerprint = resume.dataset_fingerprint(dataset) if out is not None else None
    resume_from, manifest, notes = None, None, []
    if out is not None:
        need = export.out_bytes(tables, config.dim)
        jaxps.run_on_root(lambda: outputs.check_out_dir(out, need), comm=comm)

        def find():
            path = resume.find_checkpoint(config)
            if path is None:
                return None, None, []
            m = jaxps.read_manifest(path)
            return path, m, resume.check_compatible(m, config, fingerprint, path)
        resume_from, manifest, notes = jaxps.run_on_root(find, comm=comm)
        if config.resume and resume_from is None:
            say(f"--resume auto: no checkpoint in {resume.checkpoint_root(config)}; starting "
                "afresh")
    width = mf.row_width(config.dim)
    schedule = schedules.Schedule(train, dataset.num_users, dataset.num_items,
                                  config.schedule, rank=rank, size=size, seed=config.seed)
    scoring = {"mean": dataset.mean, "rating_range": dataset.rating_range, "width": width,
               "comm": comm}
    history: list[dict] = []
    train_stats: dict = {}
    prior_seconds, prior_train, first, position, first_sub = 0.0, 0.0, 1, 0, 0
    train_seconds, compile0 = 0.0, _COMPILE_SECONDS[0]
    interrupted, summary = None, None
    stop = StopRequest(comm)
    stop.install()
    try:
        with ParameterServer(tables, technique=technique_for(config, dataset), comm=comm,
                             **ps_options(config.peer_timeout)) as ps:
            if resume_from is not None:
                meta, history = restore(ps, resume_from, notes, resume.describe, comm=comm,
                                        say=say)
                prior_seconds = float(meta.get("seconds", 0.0))
                prior_train = float(meta.get("train_seconds", 0.0))
                first = meta["epoch"] + 1
                position, first_sub, restart = resume.start_within(meta, config, size)
                if restart:
                    say(f"note: {restart}", flush=True)
                if rank == 0:
                    outputs.write_jsonl(out / "metrics.jsonl", history)
            trainer = SparseTrainer(ps, make_loss(dataset.mean, config.reg), optimizers,
                                    lookahead=config.lookahead,
                                    steps_per_call=config.steps_per_call,
                                    max_keys=max_keys(config, dataset))
            if trainer.device is not None:  # this rank's GPU: evaluation runs there too
                jax.config.update("jax_default_device", trainer.device)
            # Compiled here, for the padded sizes of every batch, so no epoch stalls for it.
            trainer.compile(next(schedules.batches(train, np.arange(min(len(train),
                                                                         config.batch_size)),
                                                   config.batch_size, dataset.num_users,
                                                   dataset.num_items)))
            elapsed = lambda: prior_seconds + time.perf_counter() - t_start
            for epoch in range(first, config.epochs + 1):
                sub_epochs = schedule.epoch(epoch, position)
                common = -(-len(range(size - 1, len(train) - position, size))
                           // config.batch_size)
                bar = None
                if rank == 0 and config.progress:  # as train.kge: a bar only on a terminal
                    bar = EpochProgress(schedules.num_batches(sub_epochs[first_sub:],
                                                              config.batch_size),
                                        f"epoch {epoch}")
                try:
                    m = train_epoch(trainer, sub_epochs, dataset, config, bar, stop=stop,
                                    first_sub=first_sub, common=common)
                finally:
                    if bar is not None:
                        bar.close()
                # Pickle-based reductions hold the GIL while waiting: only after a PS barrier.
                ps.barrier()
                stats = global_stats(m["ps"], comm)
                for k, v in stats.items():
                    if k != "local_fraction":
                        train_stats[k] = train_stats.get(k, 0) + v
                seconds = comm.allreduce(m["seconds"], op=MPI.MAX)
                train_seconds += seconds
                examples = comm.allreduce(m["examples"])
                record = {"task": "mf", "epoch": epoch,
                          "loss": comm.allreduce(m["loss_sum"]) / max(examples, 1),
                          "examples": examples, "seconds": seconds,
                          "examples_per_s": examples / max(seconds, 1e-9),
                          "compiles": m["compiles"], "local_fraction": stats["local_fraction"],
                          "ps": stats}
                if position or first_sub:
                    record["from"] = {"position": position, "sub_epoch": first_sub}
                if m["stopped_batches"] is not None or m["stopped_sub"] is not None:
                    at_pos = (min(position + m["stopped_batches"] * config.batch_size * size,
                                  len(train)) if m["stopped_batches"] is not None else 0)
                    at_sub = m["stopped_sub"] or 0
                    # Not in the checkpoint's history: the resumed run writes the epoch's line.
                    interrupted = _interrupt(ps, config, comm, stop, epoch - 1, at_pos, at_sub,
                                             len(train), history, elapsed(),
                                             prior_train + train_seconds, fingerprint, out)
                    break
                position, first_sub = 0, 0
                if "valid" in dataset.splits and config.eval_every and \
                        epoch % config.eval_every == 0:
                    ps.wait_sync()
                    record["valid"] = evaluate(ps, dataset.splits["valid"], **scoring)
                history.append(record)
                say(_epoch_line(record, config), flush=True)
                if out is not None and rank == 0:
                    outputs.write_jsonl(out / "metrics.jsonl", history)
                if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                    resume.save(ps, config, comm, epoch=epoch, position=0, sub_epoch=0,
                                num_train=len(train), history=history, seconds=elapsed(),
                                train_seconds=prior_train + train_seconds,
                                fingerprint=fingerprint)
                if epoch < config.epochs and stop.agreed():
                    interrupted = _interrupt(ps, config, comm, stop, epoch, 0, 0, len(train),
                                             history, elapsed(), prior_train + train_seconds,
                                             fingerprint, out)
                    break
            if interrupted is None:
                summary = _finish(ps, config, comm, dataset, scoring, history, train_stats,
                                  resume_from, elapsed, t_start, prior_train + train_seconds,
                                  compile0, out)
    finally:
        stop.uninstall()
    if interrupted is not None:
        # Outside the PS block: every rank raises it together, so nothing needs aborting.
        raise jaxps.JobExit(3, interrupted)
    return summary


def _finish(ps, config, comm, dataset, scoring, history, train_stats, resume_from, elapsed,
            t_start, train_seconds, compile0, out) -> dict:
    """Final evaluation, the results table, then summary.json and the exports (rank 0)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    ps.wait_sync()
    final = {s: evaluate(ps, dataset.splits[s], **scoring)
             for s in ("valid", "test") if s in dataset.splits}
    pulls = train_stats.get("pull_local", 0) + train_stats.get("pull_remote", 0)
    train_stats["local_fraction"] = train_stats.get("pull_local", 0) / pulls if pulls else 1.0
    compile_seconds = comm.allreduce(_COMPILE_SECONDS[0] - compile0, op=MPI.MAX)
    summary = {"valid": final.get("valid"), "test": final.get("test"),
               "epochs": config.epochs, "seconds": elapsed(),
               "seconds_this_run": time.perf_counter() - t_start,
               "train_seconds": train_seconds, "compile_seconds": compile_seconds,
               "resumed_from": str(resume_from) if resume_from else None,
               "ps": train_stats, "ranks": size,
               "dataset": dataset.name, "num_users": dataset.num_users,
               "num_items": dataset.num_items,
               "num_ratings": {s: len(r) for s, r in dataset.splits.items()},
               "config": dataclasses.asdict(config)}
    if history:
        summary["last_epoch"] = {k: history[-1][k] for k in ("loss", "examples_per_s", "compiles")}
    # The results first: a failing export (disk full) must not lose them.
    if rank == 0:
        print(_results_table(summary), flush=True)
    if out is not None and rank == 0:
        outputs.write_json(out / "summary.json", summary)
        summary["exports"] = export.export_factors(ps, out, dataset, config)
        outputs.write_json(out / "summary.json", summary)
    ps.barrier()
    return summary


def _interrupt(ps, config, comm, stop, epoch, position, sub_epoch, num_train, history,
               seconds, train_seconds, fingerprint, out) -> str:
    """Collective after a stop request: write a checkpoint (with --out); returns the message."""
    where = f"epoch {epoch}" + (
        f" + {position} of {num_train} ratings of epoch {epoch + 1}" if position else
        f" + {sub_epoch} of {comm.Get_size()} dsgd sub-epochs of epoch {epoch + 1}"
        if sub_epoch else "")
    if out is None:
        return f"interrupted after {where}; no checkpoint written (pass --out DIR to get one)"
    path = resume.save(ps, config, comm, epoch=epoch, position=position, sub_epoch=sub_epoch,
                       num_train=num_train, history=history, seconds=seconds,
                       train_seconds=train_seconds, fingerprint=fingerprint)
    if comm.Get_rank() == 0:
        outputs.write_jsonl(out / "metrics.jsonl", history)
    return (f"interrupted ({stop.signal_name or 'signal on another rank'}) after {where}: "
            f"checkpoint written to {path}; continue with --resume")


def _epoch_line(r: dict, config: MfConfig) -> str:
    line = (f"epoch {r['epoch']:>3}/{config.epochs}  loss {r['loss']:.4f}  "
            f"{r['examples_per_s']:>9.0f} ratings/s  local {r['local_fraction']:.3f}  "
            f"compiles {r['compiles']}")
    if "valid" in r:
        line += f"  valid RMSE {r['valid']['rmse']:.4f}"
    return line


def _results_table(summary: dict) -> str:
    if summary["valid"] is None and summary["test"] is None:
        # Said, not an empty table (train.kge says the same): --train without --test.
        rows = ["no valid/test split: nothing evaluated (pass --test FILE, --valid FILE or "
                "--valid-fraction F)"]
    else:
        rows = [f"{'split':<6}{'rmse':>10}{'mae':>10}{'ratings':>10}"]
    for split in ("valid", "test"):
        m = summary[split]
        if m is not None:
            rows.append(f"{split:<6}{m['rmse']:>10.4f}{m['mae']:>10.4f}{m['num_ratings']:>10}")
    rows.append(f"{summary['epochs']} epochs in {summary['seconds']:.1f} s "
                f"({summary['train_seconds']:.1f} s training) on {summary['ranks']} rank(s); "
                f"local fraction of pulls {summary['ps']['local_fraction']:.3f}")
    return "\n".join(rows)
