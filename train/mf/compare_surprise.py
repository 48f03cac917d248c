"""Surprise's SVD and jaxps side by side on the same split: ``python -m train.mf.compare_surprise``.

Surprise (``scikit-surprise==1.1.5``, the single-machine library MF users reach for) runs in
its own virtualenv as a subprocess (default ``.surprise-venv/bin/python``; create it with
``python3 -m venv .surprise-venv && .surprise-venv/bin/pip install scikit-surprise==1.1.5``).
jaxps runs as ``python -m train.mf`` in a subprocess too. Both are pinned to one core
(``taskset -c CORE``) when taskset exists, so "per core" means what it says.

Reported per side: test RMSE, fit seconds, ratings processed per second per core
(training ratings x epochs / fit seconds); for jaxps also the compile time (inside its fit
time) and the time until its test RMSE first reached Surprise's final one (test RMSE
evaluated after every epoch, evaluation time excluded).

Data: ``--train FILE --test FILE`` (default MovieLens-100K u1), or ``--data synthetic:...``
(its train/test splits are written as text for Surprise, into the cache folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from train.kge.data import user_cache_dir

REPO = Path(__file__).resolve().parents[2]

_SURPRISE = r"""
import json, sys, time
from surprise import SVD, Dataset, Reader, accuracy
train_path, test_path, epochs, factors = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reader = Reader(line_format="user item rating", sep="\t", rating_scale=(float(sys.argv[5]), float(sys.argv[6])))
t0 = time.perf_counter()
trainset = Dataset.load_from_file(train_path, reader).build_full_trainset()
with open(test_path) as f:
    testset = [(u, i, float(r)) for u, i, r, *_ in (line.rstrip("\n").split("\t") for line in f)]
load = time.perf_counter() - t0
algo = SVD(n_factors=factors, n_epochs=epochs, random_state=0)
t0 = time.perf_counter()
algo.fit(trainset)
fit = time.perf_counter() - t0
rmse = accuracy.rmse(algo.test(testset), verbose=False)
print(json.dumps({"rmse": rmse, "fit_seconds": fit, "load_seconds": load,
                  "num_train": trainset.n_ratings, "epochs": epochs}))
"""


def _pin(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def text_files(args) -> tuple[str, str, tuple[float, float]]:
    """(train file, test file, rating range) that both sides read."""
    if not args.data:
        from train.mf.data import load_files
        d = load_files(args.train, test=args.test)
        return args.train, args.test, d.rating_range
    from train.mf.synthetic import load_synthetic, write_text
    d = load_synthetic(args.data, (0.9, 0.05, 0.05))
    folder = user_cache_dir() / "mf-synthetic" / f"{d.name}-text"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        if not (folder / f"{split}.txt").is_file():
            write_text(folder / f"{split}.txt", d.splits[split])
    return str(folder / "train.txt"), str(folder / "test.txt"), d.rating_range


def run_surprise(args, train: str, test: str, rating_range) -> dict:
    py = Path(args.surprise_python)
    if not py.exists():
        raise SystemExit(f"{py} not found: create it with `python3 -m venv .surprise-venv && "
                         ".surprise-venv/bin/pip install scikit-surprise==1.1.5`, or pass "
                         "--surprise-python")
    cmd = [*_pin(args.core), str(py), "-c", _SURPRISE, train, test, str(args.surprise_epochs),
           str(args.dim), str(rating_range[0]), str(rating_range[1])]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if res.returncode:
        raise SystemExit(f"Surprise failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["ratings_per_s"] = out["num_train"] * out["epochs"] / out["fit_seconds"]
    return out


def run_jaxps(args, train: str, test: str, target_rmse: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="jaxps-mf-compare-"))
    source = ["--data", args.data] if args.data else ["--train", train, "--test", test]
    # With --train/--test the test file doubles as the per-epoch "valid" split, so the
    # curve of test RMSE over time is measured; with synthetic data valid is its own split.
    if not args.data:
        source += ["--valid", test]
    cmd = [*_pin(args.core), sys.executable, "-m", "train.mf", *source, "--dim", str(args.dim),
           "--out", str(out), "--no-progress", *args.jaxps_args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=_env(),
                         cwd=REPO)
    if res.returncode:
        raise SystemExit(f"jaxps failed:\n{(res.stdout + res.stderr)[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    n_train = summary["num_ratings"]["train"]
    elapsed, reached = 0.0, None
    for m in history:
        elapsed += m["seconds"]
        if reached is None and m.get("valid") and m["valid"]["rmse"] <= target_rmse:
            reached = {"epoch": m["epoch"], "seconds": elapsed}
    fit = summary["train_seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return {"rmse": summary["test"]["rmse"], "fit_seconds": fit,
            "compile_seconds": summary["compile_seconds"], "num_train": n_train,
            "epochs": summary["epochs"], "ratings_per_s": n_train * summary["epochs"] / fit,
            "ratings_per_s_without_compile":
                n_train * summary["epochs"] / max(fit - summary["compile_seconds"], 1e-9),
            "reached_surprise_rmse": reached, "args": args.jaxps_args}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.mf.compare_surprise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = REPO.parent / "shared" / "data" / "ml-100k"
    p.add_argument("--train", default=str(data / "u1.base"), help="training ratings file")
    p.add_argument("--test", default=str(data / "u1.test"), help="test ratings file")
    p.add_argument("--data", default="", help="synthetic:rows=..,cols=..,cells=.. instead")
    p.add_argument("--dim", type=int, default=100, help="factors, both sides (Surprise: 100)")
    p.add_argument("--surprise-epochs", type=int, default=20, help="Surprise's n_epochs")
    p.add_argument("--surprise-python", default=str(REPO / ".surprise-venv" / "bin" / "python"))
    p.add_argument("--core", type=int, default=0, help="pin both to this core (-1: no pinning)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("jaxps_args", nargs="*", help="extra train.mf options after --, e.g. "
                   "-- --batch-size 8192 --epochs 10")
    args = p.parse_args(argv)
    args.core = None if args.core < 0 else args.core
    train, test, rating_range = text_files(args)
    surprise = run_surprise(args, train, test, rating_range)
    jaxps_result = run_jaxps(args, train, test, surprise["rmse"])
    results = {"data": args.data or train, "surprise": surprise, "jaxps": jaxps_result}
    print(f"{'':<10}{'test RMSE':>10}{'fit s':>9}{'ratings/s/core':>16}{'compile s':>11}")
    for name, r in (("surprise", surprise), ("jaxps", jaxps_result)):
        print(f"{name:<10}{r['rmse']:>10.4f}{r['fit_seconds']:>9.2f}{r['ratings_per_s']:>16,.0f}"
              f"{r.get('compile_seconds', 0):>11.2f}")
    reached = jaxps_result["reached_surprise_rmse"]
    print("jaxps reached Surprise's test RMSE "
          + (f"after epoch {reached['epoch']}, {reached['seconds']:.2f} s (compile included)"
             if reached else "never"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
