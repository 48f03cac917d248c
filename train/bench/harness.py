"""Benchmark harness: workloads x techniques x rank counts, each its own ``mpiexec -n N`` job.

Usage:
    python -m train.bench [--quick] [--workloads kge-zipf fb15k-237] [--data-root DIR]
        [--techniques local,classic,replication,relocation,nups,adaptive] [--ranks 1,2,4]
        [--steps 200] [--warmup 20] [--timeout 900] [--out runs/bench-DATE]

Each run first trains untimed warm-up steps on every rank, until ``--warmup`` consecutive
steps compiled nothing new (compilation, the PS's first relocations and the adaptive
technique's timing estimates happen there), waits for every rank (``ps.barrier``), then
times exactly ``--steps`` more steps per rank. Throughput is all
ranks' examples over the slowest rank's timed seconds; PS counters are those of the timed
steps only. ``local`` is the plain one-process JAX trainer without PS (``jaxps.DenseTrainer``).
Writes ``results.json``, ``results.md`` (tables and the project's target ratios) and one
``<workload>.png`` per workload into ``--out``; per-job logs go to ``--out/logs``. Details:
docs/bench.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from train.bench import workloads as bench_workloads
from train.common.stats import sum_counters
from train.bench.workloads import BenchOptions

REPO = Path(__file__).resolve().parents[2]  # train/bench/harness.py -> the repository
TECHNIQUES = ("classic", "replication", "relocation", "nups", "adaptive", "lockstep")
NUPS_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)      # x the heuristic hot set (top 1% entities)
QUICK_NUPS_SCALES = (0.5, 1.0, 2.0)
LOSS_WINDOW = 10                              # "loss" = mean batch loss of the last steps
WARMUP_CAP = 5                                # warm-up: at most this x --warmup steps
TARGETS = {"adaptive@1 / local": 0.9, "adaptive@4 / classic@4": 1.0,
           "adaptive / best other": 1.0, "adaptive@2 / adaptive@1": 1.7,
           "adaptive@2 / classic@2": 1.3}


# ----- the matrix ----------------------------------------------------------------------------
def plan(args) -> list[dict]:
    """The runs to make, in order: one dict per ``mpiexec`` job (the worker's spec)."""
    runs = []
    for workload in args.workloads:
        base = {"workload": workload, "steps": args.steps, "warmup": args.warmup,
                "seed": args.seed, "data_root": args.data_root, "lookahead": args.lookahead,
                "net_latency_us": args.net_latency, "steps_per_call": args.steps_per_call}
        if "local" in args.techniques:
            runs.append(base | {"technique": "local", "ranks": 1})
        for ranks in args.ranks:
            for technique in (t for t in TECHNIQUES if t in args.techniques):
                # One rank holds every key: the hot-set size changes nothing, run it once.
                scales = args.nups_scales if technique == "nups" and ranks > 1 else (1.0,)
                for scale in scales if technique == "nups" else (None,):
                    run = base | {"technique": technique, "ranks": ranks}
                    if scale is not None:
                        run["nups_scale"] = scale
                    runs.append(run)
    return runs


def run_label(run: dict) -> str:
    """A file-name-safe name of a run, e.g. ``kge-zipf-nups-x0.5-4r``."""
    scale = f"-x{run['nups_scale']:g}" if run.get("nups_scale") is not None else ""
    net = f"-net{run['net_latency_us']:g}us" if run.get("net_latency_us") else ""
    return safe_name(f"{run['workload']}-{run['technique']}{scale}-{run['ranks']}r{net}")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


# ----- launching -----------------------------------------------------------------------------
def child_env() -> dict:
    """dev.sh's environment: one XLA/BLAS thread per rank (several ranks share few cores)."""
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_with_timeout(cmd: list[str], timeout: float, log: Path,
                      env: dict | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group and end it after ``timeout`` seconds.

    Returns (exit status, or None on timeout; the combined output) and writes ``log``.
    Hydra starts each rank in a session of its own, so only mpiexec can end them: it gets
    SIGTERM first (it then kills its ranks), and its group SIGKILL if still there 10 s later
    (its proxies then end the ranks when the connection to mpiexec drops).
    """
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env() | (env or {}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        code = None
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(cmd)}\n{out}")
    return code, out


def _failure(run: dict, status: str, error: str, seconds: float) -> dict:
    return run | {"status": status, "error": error, "job_seconds": seconds}


def _tail(text: str, lines: int = 15) -> str:
    """The end of a job's output, where MPI and Python put the error."""
    return "\n".join(text.strip().splitlines()[-lines:])


def headline(error: str) -> str:
    """The line of an error text that names it: the last Python exception line, else the
    last line (MPI's abort notices follow the traceback that explains them)."""
    lines = [x.strip() for x in error.strip().splitlines() if x.strip()]
    named = [x for x in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", x)]
    return (named or lines or ["(no output)"])[-1]


def prepare(workload: str, args, out: Path) -> str | None:
    """Generate / parse and cache a workload's data once; returns an error or None."""
    spec = {"workload": workload, "data_root": args.data_root, "seed": args.seed}
    cmd = [sys.executable, "-m", "train.bench", "--prepare", json.dumps(spec)]
    code, text = _run_with_timeout(cmd, args.timeout,
                                   out / "logs" / f"prepare-{safe_name(workload)}.log")
    if code == 0:
        return None
    return (f"prepare timed out after {args.timeout:g} s" if code is None
            else f"prepare exited with {code}: {_tail(text)}")


def launch(run: dict, args, out: Path) -> dict:
    """``args.repeats`` identical ``mpiexec -n ranks`` jobs, each with a hard timeout; the
    median job's record, with every repeat's throughput and their spread, or a failure.

    Ranks are pinned one per core (``--bind core``: Hydra's ``-bind-to core``); a run
    with a compile inside its timed steps is a failure (the harness's timings never
    include one).
    """
    label = run_label(run)
    records = []
    for repeat in range(args.repeats):
        suffix = f"-{repeat + 1}" if args.repeats > 1 else ""
        record = _launch_once(run, args, out, f"{label}{suffix}")
        if record["status"] != "ok":
            return record
        if record["timed_compiles"]:
            return _failure(run, "failed", f"{record['timed_compiles']} compile(s) inside the "
                            f"timed steps: the timings would include them",
                            record["job_seconds"])
        records.append(record)
    return summarize_repeats(records)


def summarize_repeats(records: list[dict]) -> dict:
    """The median record (by examples/s) with min/median/max of the repeats' throughputs."""
    ordered = sorted(records, key=lambda r: r["examples_per_s"])
    mid = ordered[len(ordered) // 2]
    spread = {}
    for key in ("examples_per_s", "examples_per_cpu_s"):
        values = [r[key] for r in records]
        spread[key] = {"min": min(values), "median": statistics.median(values),
                       "max": max(values), "runs": values}
    rel = (spread["examples_per_s"]["max"] - spread["examples_per_s"]["min"]) / max(
        spread["examples_per_s"]["median"], 1e-9)
    return mid | {"repeats": len(records), "spread": spread, "relative_spread": rel,
                  "examples_per_s": spread["examples_per_s"]["median"],
                  "examples_per_cpu_s": spread["examples_per_cpu_s"]["median"]}


def mpiexec_command(args, ranks: int) -> list[str]:
    """The launcher's command line: pinned one rank per core unless ``--bind none``."""
    cmd = [args.mpiexec, "-n", str(ranks)]
    if args.bind != "none":
        cmd += ["-bind-to", args.bind]
    return cmd


def _launch_once(run: dict, args, out: Path, label: str) -> dict:
    result = out / "logs" / f"{label}.json"
    result.unlink(missing_ok=True)
    cmd = [*mpiexec_command(args, run["ranks"]), sys.executable, "-m", "train.bench",
           "--worker", json.dumps(run), "--result", str(result)]
    t0 = time.perf_counter()
    env = {"JAXPS_NET_LATENCY_US": str(run.get("net_latency_us", 0))}
    code, text = _run_with_timeout(cmd, args.timeout, out / "logs" / f"{label}.log", env)
    seconds = time.perf_counter() - t0
    if code is None:
        return _failure(run, "timeout", f"no result after {args.timeout:g} s (killed); "
                        f"last output:\n{_tail(text)}", seconds)
    if code != 0 or not result.is_file():
        return _failure(run, "failed", f"exit status {code}: {_tail(text)}", seconds)
    return json.loads(result.read_text()) | {"job_seconds": seconds}


# ----- the worker (every rank of one job) ----------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (the PS transport thread included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


THREAD_KINDS = ("main", "transport", "xla", "producer")


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each live thread of this process: {native id: (name, seconds)}, from
    /proc's schedstat (nanoseconds on the CPU; Linux only, empty elsewhere)."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[int(tid)] = (name, ns / 1e9)
    return out


def thread_cpu_by_kind(before: dict, after: dict, total: float, *, main: int,
                       transport: int | None) -> dict:
    """CPU seconds per thread kind between two ``_thread_cpu`` samples: the main
    (training) thread, the PS transport thread, XLA's threads, and everything else
    (the batch producer, which ends with each epoch: total minus the threads above)."""
    kinds = dict.fromkeys(THREAD_KINDS, 0.0)
    for tid, (name, sec) in after.items():
        used = sec - before.get(tid, (name, 0.0))[1]
        if tid == main:
            kinds["main"] += used
        elif tid == transport:
            kinds["transport"] += used
        elif name.startswith(("tf_", "XLA", "xla", "llvm", "async")):
            kinds["xla"] += used
    kinds["producer"] = max(total - kinds["main"] - kinds["transport"] - kinds["xla"], 0.0)
    return kinds


def warm_up(train, source, steps: int, compiles) -> int:
    """Run untimed steps until ``steps`` consecutive ones compiled nothing new (at most
    ``WARMUP_CAP`` x steps); returns how many ran. ``train(batches, on_batch)`` runs a pass.

    Compilations depend only on the batches' shapes, so every technique (and the local
    baseline) warms up on the same batches and times the same ones.
    """
    done = quiet = 0
    last = compiles()

    def on_batch(_examples, _loss):
        nonlocal quiet, last
        quiet = quiet + 1 if compiles() == last else 0
        last = compiles()

    while quiet < steps and done < WARMUP_CAP * steps:
        n = min(steps - quiet, WARMUP_CAP * steps - done)
        train(itertools.islice(source, n), on_batch)
        done += n
    return done


def _ps_rank(problem, spec: dict, comm) -> dict:
    """Warm up, then time ``steps`` steps of the PS trainer on this rank."""
    import jaxps

    technique = spec["technique"]
    if technique == "nups":
        technique = jaxps.Nups(hot_keys=problem.hot_keys(spec["nups_scale"]))
    with jaxps.ParameterServer(problem.tables, technique=technique, comm=comm) as ps:
        trainer = jaxps.SparseTrainer(ps, problem.loss_fn, problem.optimizers,
                                      lookahead=spec["lookahead"], max_keys=problem.max_keys,
                                      steps_per_call=spec.get("steps_per_call", 1))
        source = problem.batches(comm.Get_rank(), comm.Get_size(), ps.owned_keys)
        # The one shape (max_keys), from a batch of a fresh source, so that every technique
        # and the local baseline then train on the same batches.
        trainer.compile(next(problem.batches(comm.Get_rank(), comm.Get_size())))
        warm_steps = warm_up(lambda b, f: trainer.train_epoch(b, on_batch=f), source,
                             spec["warmup"], lambda: trainer.compiles)
        warm_compiles = trainer.compiles
        ps.barrier()   # every rank starts the timed steps together
        losses = []
        transport = ps._engine.transport
        tid = None if transport is None else transport.thread_id
        threads0, cpu0 = _thread_cpu(), _cpu_seconds()
        m = trainer.train_epoch(itertools.islice(source, spec["steps"]),
                                on_batch=lambda n, loss: losses.append(loss))
        cpu = _cpu_seconds() - cpu0
        threads = thread_cpu_by_kind(threads0, _thread_cpu(), cpu,
                                     main=threading.main_thread().native_id, transport=tid)
        ps.barrier()
        hot = sum(len(k) for k in problem.hot_keys(spec["nups_scale"]).values()) \
            if spec["technique"] == "nups" else None
    return {"examples": m.examples, "steps": m.batches, "seconds": m.seconds, "losses": losses,
            "cpu_seconds": cpu, "compiles": m.compiles, "warmup_compiles": warm_compiles,
            "warmup_steps": warm_steps, "thread_cpu": threads,
            "ps": m.ps, "peak_rss_mb": _peak_rss_mb(), "nups_hot_keys": hot}


def _local_rank(problem, spec: dict) -> dict:
    from jaxps import DenseTrainer

    trainer = DenseTrainer(problem.tables, problem.loss_fn, problem.optimizers,
                           max_keys=problem.max_keys,
                           steps_per_call=spec.get("steps_per_call", 1))
    source = problem.batches(0, 1)
    warm_steps = warm_up(lambda b, f: trainer.train(b, on_batch=f), source, spec["warmup"],
                         lambda: trainer.compiles)
    warm_compiles = trainer.compiles
    threads0, cpu0 = _thread_cpu(), _cpu_seconds()
    m = trainer.train(itertools.islice(source, spec["steps"]))
    cpu = _cpu_seconds() - cpu0
    threads = thread_cpu_by_kind(threads0, _thread_cpu(), cpu,
                                 main=threading.main_thread().native_id, transport=None)
    return {"examples": m.examples, "steps": m.batches, "seconds": m.seconds,
            "losses": m.losses, "cpu_seconds": cpu, "compiles": m.compiles,
            "warmup_compiles": warm_compiles, "warmup_steps": warm_steps,
            "thread_cpu": threads,
            "ps": {}, "peak_rss_mb": _peak_rss_mb(), "nups_hot_keys": None}


def combine(spec: dict, ranks: list[dict], info: dict) -> dict:
    """One result record from every rank's measurements (see docs/bench.md for fields)."""
    examples = sum(r["examples"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    steps = min(r["steps"] for r in ranks)
    total = sum_counters(r["ps"] for r in ranks)
    pulls = total.get("pull_local", 0) + total.get("pull_remote", 0)
    rank_seconds = sum(r["seconds"] for r in ranks)
    per_ex = lambda key: total.get(key, 0) / max(examples, 1)
    tail = [sum(r["losses"][-LOSS_WINDOW:]) / max(len(r["losses"][-LOSS_WINDOW:]), 1)
            for r in ranks]
    thread_cpu = {k: sum(r.get("thread_cpu", {}).get(k, 0.0) for r in ranks)
                  for k in THREAD_KINDS}
    return spec | {
        "status": "ok", "examples_per_s": examples / max(seconds, 1e-9),
        "examples_per_cpu_s": examples / max(sum(r["cpu_seconds"] for r in ranks), 1e-9),
        "local_fraction": total.get("pull_local", 0) / pulls if pulls else 1.0,
        "wait_fraction": total.get("wait_seconds", 0.0) / max(rank_seconds, 1e-9),
        "wait_fraction_by_kind": {k[5:-8]: v / max(rank_seconds, 1e-9) for k, v in total.items()
                                  if k.startswith("wait_") and k != "wait_seconds" and v},
        "bytes_per_example": per_ex("bytes_sent"),
        "messages_per_example": per_ex("messages_sent"),
        "relocations_per_step": total.get("relocations", 0) / max(steps, 1),
        "replicas_per_step": total.get("replicas_created", 0) / max(steps, 1),
        "compiles": max(r["compiles"] for r in ranks),
        "timed_compiles": max(r["compiles"] - r["warmup_compiles"] for r in ranks),
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in ranks],
        "loss": sum(tail) / len(tail),
        "loss_timed": sum(sum(r["losses"]) for r in ranks) / max(sum(len(r["losses"])
                                                                 for r in ranks), 1),
        "examples": examples, "seconds": seconds, "steps_per_rank": steps,
        "warmup_steps": [r["warmup_steps"] for r in ranks],
        "nups_hot_keys": ranks[0]["nups_hot_keys"], "ps_totals": total, "info": info,
        "thread_cpu_seconds": thread_cpu,
        "thread_cpu_ms_per_step": {k: 1e3 * v / max(steps * len(ranks), 1)
                                   for k, v in thread_cpu.items()}}


def worker(spec: dict, result: Path) -> None:
    """Entry of every rank: build the workload, run, gather to rank 0, which writes result."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    workload, params = bench_workloads.parse(spec["workload"])
    options = BenchOptions(spec["data_root"], spec["seed"], params)
    problem = workload.build(options, comm)
    if spec["technique"] == "local":
        if comm.Get_size() != 1:
            raise ValueError("the local baseline runs on one process (ranks=1)")
        mine = _local_rank(problem, spec)
    else:
        mine = _ps_rank(problem, spec, comm)
    everyone = comm.gather(mine, root=0)  # after the PS closed: no peer needs serving
    if comm.Get_rank() == 0:
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(combine(spec, everyone, problem.info), indent=1))
        tmp.replace(result)


def prepare_worker(spec: dict) -> None:
    workload, params = bench_workloads.parse(spec["workload"])
    workload.prepare(BenchOptions(spec["data_root"], spec["seed"], params))


# ----- the report ----------------------------------------------------------------------------
def _ok(runs, workload, technique=None, ranks=None) -> list[dict]:
    return [r for r in runs if r["status"] == "ok" and r["workload"] == workload
            and (technique is None or r["technique"] == technique)
            and (ranks is None or r["ranks"] == ranks)]


def _best(runs, workload, technique, ranks) -> dict | None:
    found = _ok(runs, workload, technique, ranks)
    return max(found, key=lambda r: r["examples_per_s"]) if found else None


def ratios(runs: list[dict]) -> list[dict]:
    """The project's target ratios per workload (n/a when a run is missing or failed)."""
    out = []

    def add(workload, name, ranks, num, den, den_label=None):
        both = num is not None and den is not None
        value = num["examples_per_s"] / den["examples_per_s"] if both else None
        # The same ratio of examples per CPU-second: what it would be if every job had
        # its cores to itself (other processes on a shared machine steal wall time).
        cpu = (num.get("examples_per_cpu_s", math.nan) / den.get("examples_per_cpu_s", math.nan)
               if both else None)
        out.append({"workload": workload, "ratio": name, "ranks": ranks, "value": value,
                    "value_cpu": cpu, "target": TARGETS[name], "versus": den_label,
                    "met": None if value is None else value >= TARGETS[name]})

    for w in dict.fromkeys(r["workload"] for r in runs):
        ex = lambda t, n: _best(runs, w, t, n)
        add(w, "adaptive@1 / local", 1, ex("adaptive", 1), ex("local", 1))
        add(w, "adaptive@4 / classic@4", 4, ex("adaptive", 4), ex("classic", 4))
        for n in sorted({r["ranks"] for r in runs if r["workload"] == w}):
            others = [b for t in TECHNIQUES if t != "adaptive" and (b := ex(t, n))]
            best = max(others, key=lambda r: r["examples_per_s"]) if others else None
            add(w, "adaptive / best other", n, ex("adaptive", n), best,
                best and _tech_label(best))
        add(w, "adaptive@2 / adaptive@1", 2, ex("adaptive", 2), ex("adaptive", 1))
        if any(r.get("net_latency_us") for r in runs if r["workload"] == w):
            # Over an (emulated) network classic waits a round trip per step.
            add(w, "adaptive@2 / classic@2", 2, ex("adaptive", 2), ex("classic", 2))
    return out


def _tech_label(r: dict) -> str:
    if r.get("nups_scale") is not None and r["ranks"] > 1:
        return f"nups x{r['nups_scale']:g}"
    return r["technique"]


def _thread_ms(r: dict) -> str:
    ms = r.get("thread_cpu_ms_per_step")
    return "n/a" if not ms else " / ".join(f"{ms[k]:.2f}" for k in THREAD_KINDS)


def _fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def markdown(runs: list[dict], meta: dict) -> str:
    lines = [f"# jaxps benchmark ({meta['mode']})", "",
             f"`{meta['command']}`: {meta['steps']} timed steps per rank after a warm-up "
             f"(until {meta['warmup']} steps in a row compiled nothing); {meta['cpus']} CPU "
             f"cores; started {meta['started']}, {meta['wall_seconds']:.0f} s in all. "
             "Throughput: all ranks' examples / the slowest rank's timed seconds; `loss`: "
             f"mean batch loss of the last {LOSS_WINDOW} steps (mean over ranks). "
             f"Ranks pinned one per core (`--bind {meta.get('bind', 'core')}`); each run is the "
             f"median of {meta.get('repeats', 1)} identical jobs (`spread`: (max - min) / "
             f"median of their examples/s); `CPU ms/step` per rank: main (training) thread / "
             f"PS transport thread / XLA / batch producer."
             + (f" Emulated network: {meta['net_latency_us']:g} us one way."
                if meta.get("net_latency_us") else ""), ""]
    for w in dict.fromkeys(r["workload"] for r in runs):
        info = next((r["info"] for r in runs if r["workload"] == w and r.get("info")), None)
        lines += [f"## {w}", ""]
        if info:
            lines += [", ".join(f"{k} {v}" for k, v in info.items()), ""]
        lines += ["| technique | ranks | examples/s | spread | ex/CPU-s | CPU ms/step | local | "
                  "wait | bytes/ex | msgs/ex | reloc/step | replicas/step | compiles (timed) | "
                  "peak RSS MB | loss | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        nups_best = {n: _best(runs, w, "nups", n) for n in {r["ranks"] for r in runs}}
        for r in (r for r in runs if r["workload"] == w):
            tech = _tech_label(r)
            if r["technique"] == "nups" and r["ranks"] > 1 and nups_best.get(r["ranks"]) is r:
                tech += " (best)"
            if r["status"] != "ok":
                error = headline(r["error"])[:120].replace("|", "/")
                lines.append(f"| {tech} | {r['ranks']} | | | | | | | | | | | | | | "
                             f"{r['status']}: {error} |")
                continue
            lines.append(
                f"| {tech} | {r['ranks']} | {r['examples_per_s']:,.0f} | "
                f"{_fmt(r.get('relative_spread'), '.1%')} | "
                f"{r['examples_per_cpu_s']:,.0f} | {_thread_ms(r)} | "
                f"{r['local_fraction']:.1%} | {r['wait_fraction']:.1%} | "
                f"{r['bytes_per_example']:,.0f} | {r['messages_per_example']:.2f} | "
                f"{r['relocations_per_step']:.1f} | {r['replicas_per_step']:.1f} | "
                f"{r['compiles']} ({r['timed_compiles']}) | {max(r['peak_rss_mb']):,.0f} | "
                f"{r['loss']:.4f} | ok |")
        lines.append("")
    lines += ["## Target ratios (examples/s)", "",
              "`value`: ratio of examples/s (wall time), what the targets are about; "
              "`by CPU`: the same ratio of examples per CPU-second of all ranks (less "
              "sensitive to other processes on a shared machine).", "",
              "| workload | ratio | value | by CPU | target | met |", "|---|---|---|---|---|---|"]
    for q in meta["ratios"]:
        name = q["ratio"]
        if q["ratio"] == "adaptive / best other":
            name += f" @{q['ranks']}" + (f" (vs {q['versus']})" if q["versus"] else "")
        met = "n/a" if q["met"] is None else ("yes" if q["met"] else "**no**")
        lines.append(f"| {q['workload']} | {name} | {_fmt(q['value'], '.2f')} | "
                     f"{_fmt(q['value_cpu'], '.2f')} | >= {q['target']:g} | {met} |")
    lines.append("")
    return "\n".join(lines)


def plot(runs: list[dict], workload: str, path: Path) -> None:
    """Throughput and local share of pulls by technique and rank count (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in runs if r["workload"] == workload]
    rank_counts = sorted({r["ranks"] for r in mine if r["technique"] != "local"})
    techs = [t for t in TECHNIQUES if any(r["technique"] == t for r in mine)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    width = 0.8 / max(len(rank_counts), 1)
    for i, n in enumerate(rank_counts):
        best = [_best(runs, workload, t, n) for t in techs]
        xs = [j + (i - (len(rank_counts) - 1) / 2) * width for j in range(len(techs))]
        axes[0].bar(xs, [b["examples_per_s"] if b else 0 for b in best], width,
                    label=f"{n} rank{'s' * (n > 1)}")
        axes[1].bar(xs, [b["local_fraction"] if b else 0 for b in best], width)
        for x, t, b in zip(xs, techs, best):
            failed = [r["status"] for r in runs if r["workload"] == workload
                      and r["technique"] == t and r["ranks"] == n and r["status"] != "ok"]
            if b is None and failed:  # a missing bar says why
                for ax in axes:
                    ax.text(x, 0, failed[0], rotation=90, ha="center", va="bottom", fontsize=7)
    local = _best(runs, workload, "local", 1)
    if local:
        axes[0].axhline(local["examples_per_s"], color="k", ls="--", lw=1, label="local (no PS)")
    for ax, title in zip(axes, ("examples/s (all ranks; nups: best hot set)",
                                "share of pulled keys served locally")):
        ax.set_xticks(range(len(techs)), techs)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.suptitle(workload)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(runs: list[dict], meta: dict, out: Path) -> None:
    meta = meta | {"ratios": ratios(runs)}
    (out / "results.json").write_text(json.dumps({"runs": runs, "meta": meta}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(runs, meta))
    for w in dict.fromkeys(r["workload"] for r in runs):
        if _ok(runs, w):
            plot(runs, w, out / f"{safe_name(w)}.png")


# ----- command line --------------------------------------------------------------------------
def _csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="reduced matrix in ~10 min on 2 cores: kge-zipf-small, local@1, every "
                        "technique at 1 and 4 ranks, nups hot sets x0.5, x1, x2 (4 ranks), "
                        "1000 timed steps, one job per run")
    p.add_argument("--workloads", nargs="+", default=None, metavar="NAME[:key=value,...]",
                   help="registered workloads (--list), each optionally with parameters; "
                        "default kge-zipf and fb15k-237 (when --data-root is given)")
    p.add_argument("--data-root", default="", help="folder holding real datasets (fb15k-237/)")
    p.add_argument("--techniques", type=_csv(str), default=("local", *TECHNIQUES))
    p.add_argument("--ranks", type=_csv(int), default=None, help="default 1,2,4 (quick: 1,4)")
    p.add_argument("--nups-scales", type=_csv(float), default=None,
                   help=f"NuPS hot sets as multiples of its heuristic; default {NUPS_SCALES}")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per rank (default 2000; quick 1000)")
    p.add_argument("--repeats", type=int, default=None,
                   help="identical jobs per run; the report shows the median and the spread "
                        "(default 3; quick 1)")
    p.add_argument("--bind", default="core", choices=("core", "hwthread", "none"),
                   help="pin each rank to its own core (mpiexec -bind-to); none: let the OS "
                        "schedule (for launchers without binding)")
    p.add_argument("--net-latency", type=float, default=0.0, metavar="US",
                   help="emulated one-way network latency in microseconds "
                        "(JAXPS_NET_LATENCY_US of every rank; 0: none)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm up until this many consecutive steps compiled nothing (at most "
                        f"{WARMUP_CAP}x as many steps); default 20, quick 10")
    p.add_argument("--lookahead", type=int, default=8, help="intents this many batches ahead (the trainer's default)")
    p.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                   help="batches per jitted call, for every technique and the local baseline "
                        "(SparseTrainer's steps_per_call; --steps should be a multiple)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per mpiexec job before it is killed (default 900; quick 240)")
    p.add_argument("--out", type=Path, default=None, help="default runs/bench-<date-time>")
    p.add_argument("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"))
    p.add_argument("--list", action="store_true", help="list the registered workloads")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prepare", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    if args.workloads is None:
        args.workloads = ("kge-zipf-small",) if quick else (
            "kge-zipf", *(("fb15k-237",) if args.data_root else ()))
    args.ranks = args.ranks or ((1, 4) if quick else (1, 2, 4))
    args.nups_scales = args.nups_scales or (QUICK_NUPS_SCALES if quick else NUPS_SCALES)
    args.steps = args.steps if args.steps is not None else (1000 if quick else 2000)
    args.repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    if args.repeats < 1 or args.net_latency < 0:
        p.error("--repeats must be >= 1 and --net-latency >= 0")
    args.warmup = args.warmup if args.warmup is not None else (10 if quick else 20)
    args.timeout = args.timeout or (240.0 if quick else 900.0)
    unknown = set(args.techniques) - {"local", *TECHNIQUES}
    if unknown:
        p.error(f"unknown technique(s) {sorted(unknown)}; valid: local, {', '.join(TECHNIQUES)}")
    if args.steps < 1 or args.warmup < 0 or args.steps_per_call < 1:
        p.error("--steps and --steps-per-call must be >= 1 and --warmup >= 0")
    for w in args.workloads:
        try:
            bench_workloads.parse(w)
        except ValueError as e:
            p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), args.result)
        return 0
    if args.prepare:
        prepare_worker(json.loads(args.prepare))
        return 0
    if args.list:
        for w in bench_workloads.WORKLOADS.values():
            print(f"{w.name:16s} {w.help}")
        return 0
    out = args.out or REPO / "runs" / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    meta = {"mode": "quick" if args.quick else "full",
            "command": " ".join(["python -m train.bench", *(argv or sys.argv[1:])]),
            "steps": args.steps, "warmup": args.warmup, "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "timeout": args.timeout,
            "bind": args.bind, "repeats": args.repeats, "net_latency_us": args.net_latency}
    runs: list[dict] = []
    todo = plan(args)
    prepared: dict[str, str | None] = {}
    for i, run in enumerate(todo, 1):
        workload, params = bench_workloads.parse(run["workload"])
        options = BenchOptions(args.data_root, args.seed, params)
        reason = workload.unavailable(options)
        if reason is not None:
            result = _failure(run, "skipped", reason, 0.0)
        else:
            if run["workload"] not in prepared:
                prepared[run["workload"]] = prepare(run["workload"], args, out)
            error = prepared[run["workload"]]
            result = (_failure(run, "failed", error, 0.0) if error
                      else launch(run, args, out))
        runs.append(result)
        print(_progress(i, len(todo), result, time.perf_counter() - t0), flush=True)
        write_report(runs, meta | {"wall_seconds": time.perf_counter() - t0}, out)
    print(f"wrote {out / 'results.md'}, results.json and plots "
          f"({time.perf_counter() - t0:.0f} s)")
    print((out / "results.md").read_text())
    return 0


def _progress(i: int, n: int, r: dict, elapsed: float) -> str:
    head = f"[{i}/{n} {elapsed:5.0f}s] {run_label(r):40s}"
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()}: {headline(r['error'])[:100]}"
    return (f"{head} {r['examples_per_s']:9.0f} ex/s  local {r['local_fraction']:.3f}  "
            f"wait {r['wait_fraction']:.3f}  loss {r['loss']:.4f}  job {r['job_seconds']:.0f}s")
