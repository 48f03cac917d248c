"""jaxps next to PyTorch-BigGraph 1.0.0 on FB15k-237: seconds per epoch at PBG's config.

Runs with the jaxps virtualenv; PyTorch-BigGraph (PBG) runs only as a subprocess of its own
Python (``--pbg-python``, default .pbg-venv/bin/python, see docs/compare_pbg.md):

    nice -n 10 .venv/bin/python -m train.compare_pbg --epochs 10 --threads 1,2

1. Converts the dataset's train/valid/test.txt (head, relation, tail) with PBG's own importer
   (``python -m torchbiggraph.converters.import_from_tsv``) into ``<work>/pbg_data`` (once).
2. For each thread count T and round, trains PBG (``python -m torchbiggraph.train``) with the
   config of PBG's FB15k example (ComplEx = ``complex_diagonal`` operator, dynamic relations,
   so each relation has an lhs and an rhs operator; dot comparator, softmax loss, Adagrad
   lr 0.1) at ``--dim`` 128, batch 1000, 50 batch + 50 uniform negatives, ``workers=T``,
   then jaxps (``python -m train.kge``) at dim 128, batch 1000, 100 batch-shared negatives
   (jaxps has no per-positive uniform negatives: the closest match), AdaGrad lr 0.1, loss ce,
   with T XLA threads in one process (and, with ``--jaxps-ranks``, also T ranks x 1 thread).
3. Seconds per epoch, as each system measures its own training loop: PBG's log line
   "Processed N edges in X s", jaxps's ``metrics.jsonl`` "seconds". Also the CPU seconds
   of the whole process tree per epoch (sampled from /proc when each system prints its epoch
   line), which is far less sensitive than wall time to other jobs on a shared machine.
   Reported: the median over the epochs after the first (compilation, warm-up).
4. Filtered MRR on the whole valid split for both: jaxps's own final evaluation, and PBG's
   checkpoint (entity embeddings and lhs/rhs relation operators, exported with PBG's Python)
   ranked by ``train.kge.evaluate.evaluate`` (same filter and tie handling for both).

Everything goes under ``--work`` (default runs/compare_pbg, ignored by git): logs, configs,
checkpoints, and ``results.json`` with every per-epoch number and the commands.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# A virtualenv of its own beside .venv (docs/compare_pbg.md); --pbg-python points elsewhere.
DEFAULT_PBG_PYTHON = str(REPO / ".pbg-venv" / "bin" / "python")
SPLITS = ("train", "valid", "test")


# ----- PBG config and data ----------------------------------------------------------------------
def pbg_config(*, entity_path: str, edge_paths: list[str], checkpoint_path: str, dim: int = 128,
               epochs: int = 10, batch_size: int = 1000, num_batch_negs: int = 50,
               num_uniform_negs: int = 50, lr: float = 0.1, workers: int = 1) -> dict:
    """PBG 1.0.0's examples/configs/fb15k_config.py with the sizes of the comparison.

    The example has dimension 400 and 1000 uniform negatives; the comparison uses PBG's
    defaults for the negatives (50 batch + 50 uniform), batch 1000, and dim 128.
    """
    return dict(
        entity_path=entity_path,
        edge_paths=list(edge_paths),
        checkpoint_path=checkpoint_path,
        entities={"all": {"num_partitions": 1}},
        relations=[{"name": "all_edges", "lhs": "all", "rhs": "all",
                    "operator": "complex_diagonal"}],
        dynamic_relations=True,   # one lhs and one rhs operator per relation type
        dimension=dim,
        global_emb=False,
        comparator="dot",
        num_epochs=epochs,
        batch_size=batch_size,
        num_batch_negs=num_batch_negs,
        num_uniform_negs=num_uniform_negs,
        loss_fn="softmax",
        lr=lr,                    # Adagrad (row-wise for embeddings), also for the operators
        eval_fraction=0,          # train on all training edges (as the example)
        workers=workers,          # Hogwild processes, one torch thread each
    )


def pbg_config_source(config: dict) -> str:
    """A PBG config file (Python) returning ``config``."""
    return ("# Written by train/compare_pbg.py (PBG 1.0.0 fb15k example, comparison sizes).\n"
            "def get_torchbiggraph_config():\n"
            f"    return {config!r}\n")


def write_pbg_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pbg_config_source(config))
    return path


def pbg_data_paths(work: Path) -> tuple[str, list[str]]:
    """(entity_path, [train, valid, test] edge paths) of the converted data."""
    data = work / "pbg_data"
    return str(data), [str(data / f"{s}_partitioned") for s in SPLITS]


def convert_for_pbg(data_dir: Path, work: Path, pbg_python: str, log) -> tuple[str, list[str]]:
    """Runs PBG's importer on train/valid/test.txt (it skips work already done)."""
    entity_path, edge_paths = pbg_data_paths(work)
    cfg = write_pbg_config(work / "pbg_import_config.py",
                           pbg_config(entity_path=entity_path, edge_paths=edge_paths,
                                      checkpoint_path=str(work / "unused")))
    done = Path(entity_path) / "entity_names_all_0.json"
    if done.is_file() and all((Path(p) / "edges_0_0.h5").is_file() for p in edge_paths):
        log(f"PBG data: {entity_path} (converted before)")
        return entity_path, edge_paths
    cmd = [pbg_python, "-m", "torchbiggraph.converters.import_from_tsv", str(cfg),
           *(str(data_dir / f"{s}.txt") for s in SPLITS),      # positionals before options
           "--lhs-col", "0", "--rel-col", "1", "--rhs-col", "2"]
    log("PBG import: " + " ".join(cmd))
    t = time.perf_counter()
    with open(work / "pbg_import.log", "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, env=_pbg_env(1))
    log(f"PBG import done in {time.perf_counter() - t:.0f} s")
    return entity_path, edge_paths


# ----- running a system and timing its epochs ---------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(root: int) -> float | None:
    """User + system CPU seconds of ``root`` and all its live descendants, including the
    children they have already reaped (cutime/cstime); None where /proc is unavailable."""
    procs: dict[int, tuple[int, float]] = {}   # pid -> (ppid, cpu seconds)
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        procs[int(name)] = (ppid, (utime + stime + cutime + cstime) / _CLK_TCK)
    if root not in procs:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def run_marked(cmd: list[str], *, env: dict, log_path: Path, marker: re.Pattern,
               cwd: Path = REPO, echo=None) -> list[tuple[str, float, float | None]]:
    """Runs ``cmd``, teeing its output to ``log_path``; on every line matching ``marker``
    records (the line, wall time, CPU seconds of the process tree so far). Raises on failure."""
    marks = []
    with open(log_path, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert p.stdout is not None
        for line in p.stdout:
            f.write(line)
            if marker.search(line):
                marks.append((line.rstrip("\n"), time.perf_counter(), tree_cpu_seconds(p.pid)))
                if echo:
                    echo(line.rstrip("\n"))
        rc = p.wait()
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}; log {log_path}:\n{tail}")
    return marks


def _pbg_env(threads: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    return env


def jaxps_env(threads: int) -> dict:
    """One process with ``threads`` XLA threads (threads=1 is dev.sh's setting)."""
    eigen = "false" if threads == 1 else "true"
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={eigen} "
                         f"intra_op_parallelism_threads={threads}")
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


_TS = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
PBG_START = re.compile(_TS + r".*Starting epoch (\d+) /")
PBG_FINISH = re.compile(_TS + r".*Finished epoch (\d+) /")
PBG_PROCESSED = re.compile(r"Processed (\d+) edges in ([0-9.]+) s")
PBG_LOSS = re.compile(r"\bloss:\s+([-+0-9.eE]+)")
PBG_MARKER = re.compile(r"(Starting|Finished) epoch \d+ /")
JAXPS_MARKER = re.compile(r"^epoch\s+\d+/\d+\s")


def _ts(s: str) -> float:
    return _dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_pbg_log(text: str) -> list[dict]:
    """Per epoch of a PBG training log: ``seconds`` (PBG's "Processed N edges in X s" of the
    epoch's bucket(s), summed), ``epoch_seconds`` (log time from "Starting" to "Finished"),
    ``edges`` and ``loss`` (of the last bucket)."""
    epochs: dict[int, dict] = {}
    cur = None
    for line in text.splitlines():
        if m := PBG_START.search(line):
            cur = int(m.group(2))
            epochs[cur] = {"epoch": cur, "start": _ts(m.group(1)), "seconds": 0.0, "edges": 0}
        elif (m := PBG_FINISH.search(line)) and int(m.group(2)) in epochs:
            e = epochs[int(m.group(2))]
            e["epoch_seconds"] = _ts(m.group(1)) - e.pop("start")
        elif cur is not None and (m := PBG_PROCESSED.search(line)):
            epochs[cur]["seconds"] += float(m.group(2))
            epochs[cur]["edges"] += int(m.group(1))
        elif cur is not None and (m := PBG_LOSS.search(line)):
            epochs[cur]["loss"] = float(m.group(1))
    return [epochs[k] for k in sorted(epochs) if "epoch_seconds" in epochs[k]]


def pbg_epoch_cpu(marks) -> dict[int, float]:
    """CPU seconds of each epoch from "Starting epoch k" to "Finished epoch k" marks."""
    start, out = {}, {}
    for line, _, cpu in marks:
        m = re.search(r"(Starting|Finished) epoch (\d+) /", line)
        k = int(m.group(2))
        if m.group(1) == "Starting":
            start[k] = cpu
        elif start.get(k) is not None and cpu is not None:
            out[k] = cpu - start[k]
    return out


def jaxps_epoch_cpu(marks) -> dict[int, float]:
    """CPU seconds between consecutive jaxps epoch lines (epoch 1 has no start mark)."""
    out = {}
    for (_, _, a), (line, _, b) in zip(marks, marks[1:]):
        k = int(re.match(r"epoch\s+(\d+)/", line).group(1))
        if a is not None and b is not None:
            out[k] = b - a
    return out


def read_jaxps_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def median_after_first(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values[1:] if len(values) > 1 else values)


def best_after_first(values: list[float]) -> float | None:
    """The fastest epoch after the first: the estimate least disturbed by other jobs."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return min(values[1:] if len(values) > 1 else values)


# ----- PBG embeddings and filtered evaluation -----------------------------------------------
_EXPORT = """
import sys, h5py, numpy as np
ckpt, out = sys.argv[1], sys.argv[2]
v = int(open(ckpt + "/checkpoint_version.txt").read().strip())
with h5py.File(f"{ckpt}/embeddings_all_0.v{v}.h5", "r") as h:
    entity = h["embeddings"][...]
with h5py.File(f"{ckpt}/model.v{v}.h5", "r") as h:
    g = h["model/relations/0/operator"]
    ops = {f"{s}_{c}": g[s][c][...] for s in ("lhs", "rhs") for c in ("real", "imag")}
np.savez(out, entity=entity, version=v, **ops)
"""


def export_pbg_checkpoint(pbg_python: str, checkpoint: Path, out: Path) -> Path:
    """entity [N, dim], {lhs,rhs}_{real,imag} [R, dim/2] of PBG's latest checkpoint, as npz."""
    subprocess.run([pbg_python, "-c", _EXPORT, str(checkpoint), str(out)], check=True,
                   env=_pbg_env(1))
    return out


def map_triples(path: Path, entity_ids: dict, relation_ids: dict) -> np.ndarray:
    """int64 [n, 3] (s, p, o) of a head/relation/tail text file, in PBG's numbering."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array([(entity_ids[h], relation_ids[r], entity_ids[t]) for h, r, t in rows],
                    dtype=np.int64).reshape(-1, 3)


def pbg_relation_rows(ops: dict) -> np.ndarray:
    """[R, 2 dim]: [lhs_real | lhs_imag | rhs_real | rhs_imag] per relation."""
    return np.concatenate([ops["lhs_real"], ops["lhs_imag"], ops["rhs_real"], ops["rhs_imag"]],
                          axis=1).astype(np.float32)


def _complex_diag(x, re, im):
    """PBG's ComplexDiagonal operator: x * (re + i im), x as [real | imag] halves."""
    import jax.numpy as jnp
    h = x.shape[-1] // 2
    xr, xi = x[..., :h], x[..., h:]
    return jnp.concatenate([xr * re - xi * im, xr * im + xi * re], axis=-1)


def pbg_score_sp_(s, p, o_all):
    """Tail query (s, r, ?) as PBG scores it: dot(g_r(s), o) with g_r the lhs operator."""
    h = s.shape[-1] // 2
    return _complex_diag(s, p[:, :h], p[:, h:2 * h]) @ o_all.T


def pbg_score__po(s_all, p, o):
    """Head query (?, r, o) as PBG scores it: dot(s, h_r(o)) with h_r the rhs operator."""
    h = o.shape[-1] // 2
    return _complex_diag(o, p[:, 2 * h:3 * h], p[:, 3 * h:]) @ s_all.T


def pbg_filtered_metrics(npz: Path, entity_path: Path, data_dir: Path,
                         split: str = "valid", max_triples: int = 0) -> dict:
    """Filtered MRR/MR/Hits@k of PBG's embeddings with jaxps's evaluator (train + valid +
    test filter, LibKGE's rounded-mean-rank ties)."""
    from train.kge.evaluate import build_filter, evaluate

    entity_names = json.loads((entity_path / "entity_names_all_0.json").read_text())
    relation_names = json.loads((entity_path / "dynamic_rel_names.json").read_text())
    ent = {n: i for i, n in enumerate(entity_names)}
    rel = {n: i for i, n in enumerate(relation_names)}
    splits = {s: map_triples(data_dir / f"{s}.txt", ent, rel) for s in SPLITS}
    with np.load(npz) as z:
        entity = np.asarray(z["entity"], np.float32)
        relations = pbg_relation_rows(z)
    index = build_filter(*splits.values(), num_entities=len(entity_names),
                         num_relations=len(relation_names))
    triples = splits[split]
    if max_triples and len(triples) > max_triples:
        pick = np.random.default_rng([0, 7]).choice(len(triples), max_triples, replace=False)
        triples = triples[np.sort(pick)]
    return evaluate(triples, filter_index=index, entity_rows=lambda a, b: entity[a:b],
                    relation_rows=lambda ids: relations[ids], score_sp_=pbg_score_sp_,
                    score__po=pbg_score__po)


# ----- the runs -------------------------------------------------------------------------------
def run_pbg(args, work: Path, entity_path: str, edge_paths: list[str], threads: int,
            tag: str, log) -> dict:
    run_dir = work / f"pbg-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)   # PBG resumes from an existing checkpoint
    run_dir.mkdir(parents=True)
    cfg = pbg_config(entity_path=entity_path, edge_paths=[edge_paths[0]],
                     checkpoint_path=str(run_dir / "model"), dim=args.dim, epochs=args.epochs,
                     batch_size=args.batch_size, num_batch_negs=args.num_batch_negs,
                     num_uniform_negs=args.num_uniform_negs, lr=args.lr, workers=threads)
    cfg_path = write_pbg_config(run_dir / "config.py", cfg)
    cmd = [args.pbg_python, "-m", "torchbiggraph.train", str(cfg_path)]
    log(f"[{tag}] PBG: OMP_NUM_THREADS={threads} " + " ".join(cmd))
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    marks = run_marked(cmd, env=_pbg_env(threads), log_path=run_dir / "train.log",
                       marker=PBG_MARKER, echo=(lambda s: log("  " + s)) if args.verbose else None)
    wall = time.perf_counter() - t0
    epochs = parse_pbg_log((run_dir / "train.log").read_text())
    cpu = pbg_epoch_cpu(marks)
    for e in epochs:
        e["cpu_seconds"] = cpu.get(e["epoch"])
    result = {"system": "PBG 1.0.0", "threads": threads, "mode": f"{threads} worker(s)",
              "tag": tag, "epochs": epochs, "run_seconds": wall, "config": cfg,
              "command": cmd, "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]}
    if args.eval:
        npz = export_pbg_checkpoint(args.pbg_python, run_dir / "model", run_dir / "emb.npz")
        t = time.perf_counter()
        result["valid"] = _short(pbg_filtered_metrics(npz, Path(entity_path), args.data,
                                                      max_triples=args.max_eval))
        log(f"[{tag}] PBG filtered valid MRR {result['valid']['mrr']:.4f} "
            f"({time.perf_counter() - t:.0f} s to evaluate)")
    return result


def run_jaxps(args, work: Path, threads: int, ranks: int, tag: str, log) -> dict:
    out = work / f"jaxps-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    kge = [sys.executable, "-m", "train.kge", "--data", str(args.data), "--model", "complex",
           "--dim", str(args.dim), "--batch-size", str(args.batch_size),
           "--negatives", str(args.num_batch_negs + args.num_uniform_negs),
           "--optimizer", "adagrad", "--lr", str(args.lr), "--loss", "ce",
           "--epochs", str(args.epochs), "--eval-every", "0",
           "--max-eval", str(args.max_eval if args.eval else 1), "--no-progress",
           "--out", str(out), *args.jaxps_arg]
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks), *kge]
        env, mode = jaxps_env(1), f"{ranks} ranks x 1 thread"
    else:
        cmd, env, mode = kge, jaxps_env(threads), f"1 process, {threads} XLA thread(s)"
    log(f"[{tag}] jaxps: XLA_FLAGS='{env['XLA_FLAGS']}' " + " ".join(cmd))
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    marks = run_marked(cmd, env=env, log_path=out / "train.log", marker=JAXPS_MARKER,
                       echo=(lambda s: log("  " + s)) if args.verbose else None)
    wall = time.perf_counter() - t0
    metrics = read_jaxps_metrics(out)
    cpu = jaxps_epoch_cpu(marks)
    epochs = [{"epoch": m["epoch"], "seconds": m["seconds"], "loss": m["loss"],
               "cpu_seconds": cpu.get(m["epoch"])} for m in metrics]
    result = {"system": "jaxps", "threads": threads, "mode": mode, "tag": tag,
              "epochs": epochs, "run_seconds": wall, "command": cmd,
              "xla_flags": env["XLA_FLAGS"], "loadavg_before": load0,
              "loadavg_after": os.getloadavg()[0]}
    summary = json.loads((out / "summary.json").read_text())
    if args.eval and summary.get("valid"):
        result["valid"] = summary["valid"]
    return result


def _short(m: dict) -> dict:
    return {k: m[k] for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10", "num_triples")}


def summarize(results: list[dict]) -> list[dict]:
    """One row per (system, mode): medians over the epochs after the first of every run."""
    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["system"], r["mode"])
        row = rows.setdefault(key, {"system": r["system"], "mode": r["mode"],
                                    "threads": r["threads"], "wall": [], "best": [], "cpu": [],
                                    "mrr": [], "loss": [], "load": []})
        eps = r["epochs"]
        row["wall"].append(median_after_first([e["seconds"] for e in eps]))
        row["best"].append(best_after_first([e["seconds"] for e in eps]))
        row["cpu"].append(median_after_first([e.get("cpu_seconds") for e in eps]))
        row["loss"].append(eps[-1].get("loss") if eps else None)
        row["load"].append((r["loadavg_before"] + r["loadavg_after"]) / 2)
        if r.get("valid"):
            row["mrr"].append(r["valid"]["mrr"])
    out = []
    for row in rows.values():
        med = lambda xs: statistics.median(xs) if (xs := [x for x in xs if x is not None]) \
            else None
        out.append({"system": row["system"], "mode": row["mode"], "threads": row["threads"],
                    "runs": len(row["wall"]), "s_per_epoch": med(row["wall"]),
                    "best_s_per_epoch": min(x for x in row["best"] if x is not None),
                    "cpu_s_per_epoch": med(row["cpu"]), "final_loss": med(row["loss"]),
                    "valid_mrr": med(row["mrr"]), "loadavg": med(row["load"])})
    return out


def format_table(rows: list[dict], epochs: int) -> str:
    f = lambda x, spec: "-" if x is None else format(x, spec)
    head = (f"{'system':<10} {'threads':>7}  {'mode':<28} {'s/epoch':>8} {'best':>6} "
            f"{'cpu s/ep':>8} {'loss':>7} {'valid MRR':>9} {'load':>5}")
    lines = [f"s/epoch and cpu s/ep: median over epochs 2..{epochs} (median of the runs); best: "
             "fastest such epoch of all runs; MRR: filtered, after the last epoch; load: "
             "1-min load average during the runs", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:<10} {r['threads']:>7}  {r['mode']:<28} "
                     f"{f(r['s_per_epoch'], '8.2f')} {f(r.get('best_s_per_epoch'), '6.2f')} "
                     f"{f(r['cpu_s_per_epoch'], '8.2f')} "
                     f"{f(r['final_loss'], '7.3f')} {f(r['valid_mrr'], '9.4f')} "
                     f"{f(r['loadavg'], '5.1f')}")
    return "\n".join(lines)


def _git_state() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.split("\n")
        return {"commit": commit, "modified": [d[3:] for d in dirty if d.strip()]}
    except OSError:
        return {}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.compare_pbg", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fb15k-237",
                   help="folder with train.txt, valid.txt, test.txt (head relation tail)")
    p.add_argument("--pbg-python", default=DEFAULT_PBG_PYTHON,
                   help="Python of a virtualenv with torchbiggraph 1.0.0")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "compare_pbg",
                   help="output folder (converted data, logs, checkpoints, results.json)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", default="1,2",
                   help="comma-separated thread counts; PBG: workers = OMP threads = T")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat each PBG/jaxps pair this often (alternating, against drifting "
                        "load); the table shows the median run")
    p.add_argument("--jaxps-ranks", action=argparse.BooleanOptionalAction, default=False,
                   help="for T > 1, also run jaxps as T MPI ranks with 1 thread each")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--num-batch-negs", type=int, default=50)
    p.add_argument("--num-uniform-negs", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="filtered valid MRR of both after the last epoch")
    p.add_argument("--max-eval", type=int, default=0,
                   help="evaluate at most this many valid triples (0: all)")
    p.add_argument("--jaxps-arg", action="append", default=[],
                   help="extra argument for python -m train.kge (repeat; e.g. "
                        "--jaxps-arg=--reg --jaxps-arg=0)")
    p.add_argument("--systems", default="pbg,jaxps", help="which systems to run")
    p.add_argument("--verbose", action="store_true", help="echo the per-epoch lines")
    p.add_argument("--table-only", action="store_true",
                   help="only print the table of an earlier run's <work>/results.json")
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is not counted)")
    if not args.systems <= {"pbg", "jaxps"}:
        p.error("--systems: pbg and/or jaxps")
    if "pbg" in args.systems and not args.table_only and not Path(args.pbg_python).exists():
        p.error(f"--pbg-python {args.pbg_python} not found (see docs/compare_pbg.md)")
    args.data = args.data.resolve()
    args.work = args.work.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table_only:
        saved = json.loads((args.work / "results.json").read_text())
        print(format_table(summarize(saved["runs"]), saved["runs"][0]["epochs"][-1]["epoch"]))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)
    entity_path = edge_paths = None
    if "pbg" in args.systems:
        entity_path, edge_paths = convert_for_pbg(args.data, args.work, args.pbg_python, log)
    results = []
    meta = {"argv": sys.argv, "git": _git_state(), "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for rnd in range(args.rounds):
        for t in args.threads:
            tag = f"t{t}-r{rnd}"
            # Alternate which system goes first, so drifting load hits both alike.
            order = ["pbg", "jaxps"] if rnd % 2 == 0 else ["jaxps", "pbg"]
            for system in order:
                if system not in args.systems:
                    continue
                if system == "pbg":
                    runs = [lambda: run_pbg(args, args.work, entity_path, edge_paths, t, tag, log)]
                else:
                    runs = [lambda: run_jaxps(args, args.work, t, 1, tag, log)]
                    if args.jaxps_ranks and t > 1:
                        runs.append(lambda: run_jaxps(args, args.work, t, t, tag + "-ranks", log))
                for run in runs:
                    r = run()
                    results.append(r)
                    log(f"[{r['tag']}] {r['system']} ({r['mode']}): "
                        f"{median_after_first([e['seconds'] for e in r['epochs']]):.2f} s/epoch"
                        f" (best {best_after_first([e['seconds'] for e in r['epochs']]):.2f}), "
                        f"cpu {median_after_first([e.get('cpu_seconds') for e in r['epochs']]) or 0:.2f}"
                        f" s/epoch, run {r['run_seconds']:.0f} s")
                    (args.work / "results.json").write_text(json.dumps(
                        {"meta": meta, "table": summarize(results), "runs": results},
                        indent=1) + "\n")
    print()
    print(format_table(summarize(results), args.epochs))
    print(f"\nresults: {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
