"""``python -m train.kge.search``: a small grid or random hyperparameter search of KGE runs.

    python -m train.kge.search --config FILE.yaml --trials 20 --random \\
        --space lr=0.05,0.1,0.2 --space dim=64,128 --out runs/search -- --data kinship

The search space is the config file's ``search:`` section (lists of values, or
``{low, high, log}`` ranges for --random) with each ``--space KEY=a,b,...`` added or
replacing a key. Each trial is a normal ``python -m train.kge`` run, in-process, with
``--config FILE``, the arguments after ``--``, the trial's values and ``--out OUT/trial-NNN``:
its own folder with metrics.jsonl, summary.json, best model and embeddings. The trials are
ranked by their final valid MRR (that of their best epoch, train/kge/early.py); the table goes
to the console, OUT/search.md and OUT/search.json, and the best trial's whole config to
OUT/best.yaml (usable as --config), all rewritten after every trial. Trials are sampled
with --seed, so a search repeats; an --out that holds an earlier search is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

import jaxps
from train.common import outputs
from train.kge import presets
from train.kge.config import KgeConfig, parse_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.kge.search", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Grid or random search over train.kge settings; arguments after -- go "
                    "to every trial (e.g. -- --data kinship --epochs 50).")
    p.add_argument("--config", default="", help="YAML config of every trial, with an "
                   "optional search: section (the space)")
    p.add_argument("--trials", type=int, default=20, help="number of trials (grid: at most "
                   "this many of its points, in order)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--grid", dest="mode", action="store_const", const="grid",
                      help="every combination of the space's lists")
    mode.add_argument("--random", dest="mode", action="store_const", const="random",
                      help="combinations drawn at random (distinct while possible)")
    p.set_defaults(mode="random")
    p.add_argument("--space", action="append", default=[], metavar="KEY=a,b,...",
                   help="values of one option (KgeConfig name, e.g. lr=0.05,0.1); repeatable")
    p.add_argument("--out", required=True, help="folder of the trials and the summary table")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    return p


def _parse_space(items: list[str], p: argparse.ArgumentParser) -> dict:
    fields = {f.name for f in dataclasses.fields(KgeConfig)}
    space = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values or key not in fields:
            p.error(f"--space {item!r}: expected KEY=a,b,... with KEY an option of "
                    "train.kge (e.g. lr=0.05,0.1)")
        space[key] = [v.strip() for v in values.split(",")]
    return space


def draw(space: dict, trials: int, mode: str, seed: int) -> list[dict]:
    """The trials' settings: ``trials`` grid points in order, or random draws (a list is
    sampled uniformly, a {low, high, log} range uniformly or log-uniformly)."""
    keys = sorted(space)
    if not keys:
        return [{}]
    if mode == "grid":
        if any(isinstance(space[k], dict) for k in keys):
            raise ValueError("--grid needs lists of values, not ranges: "
                             + ", ".join(k for k in keys if isinstance(space[k], dict)))
        points = itertools.product(*(space[k] for k in keys))
        return [dict(zip(keys, v)) for v in itertools.islice(points, trials)]
    rng = np.random.default_rng(seed)
    finite = all(isinstance(space[k], list) for k in keys)
    size = math.prod(len(space[k]) for k in keys) if finite else math.inf
    picked, seen = [], set()
    while len(picked) < trials:
        trial = {}
        for k in keys:
            v = space[k]
            if isinstance(v, list):
                trial[k] = v[int(rng.integers(len(v)))]
            else:
                lo, hi = v["low"], v["high"]
                x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if v["log"] \
                    else rng.uniform(lo, hi)
                trial[k] = int(round(x)) if isinstance(lo, int) else float(f"{x:.4g}")
        key = tuple(str(trial[k]) for k in keys)
        if key in seen and len(seen) < size:
            continue  # distinct while the space has unseen points
        seen.add(key)
        picked.append(trial)
    return picked


def _flags(trial: dict) -> list[str]:
    argv = []
    for k, v in trial.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool) or str(v).lower() in ("true", "false"):
            truth = v if isinstance(v, bool) else str(v).lower() == "true"
            argv.append(flag if truth else "--no-" + k.replace("_", "-"))
        else:
            argv += [flag, str(v)]
    return argv


def _or_dash(x) -> str:
    return "-" if x is None else str(x)  # a run without a valid split has no best epoch


def table(rows: list[dict], keys: list[str]) -> str:
    """The markdown table of the trials, best valid MRR first."""
    head = ["rank", "trial", *keys, "valid MRR", "test MRR", "best epoch", "epochs", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        f = lambda x: "-" if x is None else f"{x:.4f}"
        lines.append("| " + " | ".join([str(i), r["trial"], *(str(r["params"][k]) for k in keys),
                                        f(r["valid_mrr"]), f(r["test_mrr"]),
                                        _or_dash(r.get("best_epoch")),
                                        _or_dash(r.get("epochs_trained")),
                                        f"{r['seconds']:.0f}"]) + " |"
                     + (f" failed: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def check_out(out: Path) -> None:
    """Refuse an --out that holds an earlier search: its trial folders would be trained over
    (or refused one by one by train.kge, when they hold checkpoints or a best model) and its
    tables replaced by a mix of both searches, with the earlier best.yaml left beside them."""
    earlier = sorted(p.name for p in out.glob("trial-*")) + [
        n for n in ("search.json", "search.md", "best.yaml") if (out / n).exists()]
    if earlier:
        raise ValueError(f"--out {out} holds an earlier search ({', '.join(earlier[:4])}"
                         f"{', ...' if len(earlier) > 4 else ''}); pass another --out, or "
                         "delete that folder to search afresh")


def ranked(rows: list[dict]) -> list[dict]:
    """The trials by valid MRR, best first; those without one (failed, no valid split) last."""
    return sorted(rows, key=lambda r: -math.inf if r["valid_mrr"] is None else -r["valid_mrr"])


def write_results(out: Path, args, space: dict, rows: list[dict], keys: list[str],
                  total: int) -> None:
    """OUT/search.md, search.json and best.yaml of the trials so far (rank 0); rewritten
    after every trial, so a search that stops early keeps the table of its finished trials."""
    rows = ranked(rows)
    text = table(rows, keys)
    out.mkdir(parents=True, exist_ok=True)  # no trial may have made it (all failed early)
    done = f"{len(rows)} trials" if len(rows) == total else f"{len(rows)} of {total} trials"
    outputs.write_text(out / "search.md", f"# train.kge.search: {done} ({args.mode}), ranked "
                       f"by valid MRR\n\n{text}\n")
    outputs.write_json(out / "search.json", {"mode": args.mode, "seed": args.seed,
                                             "space": space, "trials_planned": total,
                                             "trials": rows})
    if rows[0].get("config") and rows[0]["valid_mrr"] is not None:
        best = {k: v for k, v in rows[0]["config"].items()
                if k not in ("out", "resume", "config", "preset", "progress")}
        outputs.write_text(out / "best.yaml", f"# best of {len(rows)} trials of "
                           f"train.kge.search in {out} ({rows[0]['trial']}, valid MRR "
                           f"{rows[0]['valid_mrr']:.4f})\n" + yaml.safe_dump(best))


def main(argv=None) -> None:
    from train.kge.train import run
    argv = sys.argv[1:] if argv is None else list(argv)
    passthrough = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    p = parser()
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error(f"--trials must be >= 1, got {args.trials}")
    space = {}
    if args.config:
        try:
            space = presets.load_file(args.config)[1]
        except ValueError as e:
            p.error(str(e))
    space.update(_parse_space(args.space, p))
    try:
        trials = draw(space, args.trials, args.mode, args.seed)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out)
    base = passthrough + (["--config", args.config] if args.config else [])
    # Every trial's options are checked before the first one trains.
    configs = [parse_args(base + _flags(t) + ["--out", str(out / f"trial-{i:03d}")])
               for i, t in enumerate(trials)]
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    jaxps.run_on_root(lambda: check_out(out), comm=comm)
    say = print if comm.Get_rank() == 0 else (lambda *a, **k: None)
    keys = sorted(space)
    rows = []
    for i, (trial, config) in enumerate(zip(trials, configs)):
        say(f"--- trial {i + 1}/{len(trials)}: {trial or '(no space: the base config)'}",
            flush=True)
        t0 = time.perf_counter()
        row = {"trial": f"trial-{i:03d}", "params": trial, "valid_mrr": None,
               "test_mrr": None}
        try:
            summary = run(config, comm)
        except (ValueError, jaxps.InputError) as e:
            if comm.Get_size() > 1:
                raise  # a trial failing on one rank only cannot be skipped together
            row["error"] = str(e).splitlines()[0][:200]
            say(f"trial {i + 1} failed: {e}", flush=True)
        except jaxps.JobExit as e:  # interrupted (SIGINT/SIGTERM): the table so far is kept
            raise jaxps.JobExit(e.code, f"search stopped in trial {i + 1} of {len(trials)}: "
                                f"{e.message}" + (f"; the {len(rows)} finished trials are "
                                                  f"ranked in {out / 'search.md'}"
                                                  if rows else "")) from e
        else:
            row.update(valid_mrr=(summary["valid"] or {}).get("mrr"),
                       test_mrr=(summary["test"] or {}).get("mrr"),
                       best_epoch=summary.get("best_epoch"),
                       epochs_trained=summary.get("epochs_trained"),
                       stopped=summary.get("stopped"),
                       config=dataclasses.asdict(config))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if comm.Get_rank() == 0:
            write_results(out, args, space, rows, keys, len(trials))
    say(table(ranked(rows), keys), flush=True)
    if all(r["valid_mrr"] is None for r in rows):
        say("no trial has a valid MRR (no valid split, or every trial failed): no best.yaml "
            "written", flush=True)


if __name__ == "__main__":
    jaxps.run_main(main)
