"""``python -m train.kge.predict``: top-k link prediction from a finished run's exports.

    python -m train.kge.predict --run OUT --head H --relation R [--top 10] [--filter]
    python -m train.kge.predict --run OUT --relation R --tail T        # heads of (?, R, T)
    python -m train.kge.predict --run OUT --head H --relation R --tail T   # + the rank of T

OUT is the ``--out`` folder of ``python -m train.kge``: its ``summary.json`` (the config: model,
dim, reciprocal) and the exported ``*_embeddings.npy`` / ``*_ids.txt`` (layout: README, "KGE
exports"). Entities and relations are given by name or by id (the line number, from 0, in
``entity_ids.txt`` / ``relation_ids.txt``). Head queries (?, R, T) of a reciprocal run are
scored as (T, R^-1, ?) with ``reciprocal_relation_embeddings.npy``, as in training.
``--filter`` leaves out candidates that make a known triple (train + valid + test of the
run's dataset), as the filtered metrics do; the answer given with both --head and --tail is
always ranked. Ranks count ties as the evaluation does (rounded mean rank).
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

import models
from train.kge.data import DataError, load_dataset


class Run(NamedTuple):
    """A finished run's model and embeddings (float32 arrays as exported)."""
    folder: Path
    summary: dict                 # summary.json of the run
    config: dict                  # its "config": the run's KgeConfig as a dict
    model: models.KgeModel
    entities: np.ndarray          # [E, We]
    relations: np.ndarray         # [R, Wr]
    inverse: np.ndarray | None    # [R, Wr]: row i scores (o, i^-1, ?); None without reciprocal
    entity_names: list[str]
    relation_names: list[str]


def load_run(folder: str | Path) -> Run:
    """The exports of a train.kge ``--out`` folder, checked against its config.

    Raises:
      DataError: a missing file (a run that has not finished), a summary.json that is not a
        train.kge run's (a train.mf run), or shapes that disagree with the config or the id
        files.
    """
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"--run {folder}: no summary.json; pass the --out folder of a finished "
                        "python -m train.kge run")
    try:
        summary = json.loads(summary_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"--run {folder}: summary.json is not JSON ({e}); pass the --out "
                        "folder of a finished python -m train.kge run") from e
    config = summary.get("config") if isinstance(summary, dict) else None
    # A train.mf run's summary.json has a config too, without a KGE model.
    if not isinstance(config, dict) or not isinstance(config.get("model"), str) or \
            config["model"] not in models.MODELS:
        raise DataError(f"--run {folder}: summary.json has no train.kge config (a model and "
                        "dim; a train.mf run?); pass the --out folder of a finished python -m "
                        "train.kge run")
    model = models.get_model(config["model"])
    names = {t: _read_ids(folder / f"{t}_ids.txt") for t in ("entity", "relation")}
    widths = {"entity": model.entity_width(config["dim"]),
              "relation": model.relation_width(config["dim"])}
    arrays = {}
    files = [("entity", "entity_embeddings.npy"), ("relation", "relation_embeddings.npy")]
    if config.get("reciprocal"):
        files.append(("relation", "reciprocal_relation_embeddings.npy"))
    for table, file in files:
        path = folder / file
        if not path.is_file():
            raise DataError(f"--run {folder}: no {file}; the run did not finish its export")
        rows = np.load(path, allow_pickle=False)
        want = (len(names[table]), widths[table])
        if rows.shape != want:
            raise DataError(f"{path}: shape {rows.shape}, expected {want} ({table}_ids.txt "
                            f"names, --model {config['model']} --dim {config['dim']})")
        arrays[file] = rows
    return Run(folder, summary, config, model, arrays["entity_embeddings.npy"],
               arrays["relation_embeddings.npy"],
               arrays.get("reciprocal_relation_embeddings.npy"), names["entity"],
               names["relation"])


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} not found; pass the --out folder of a finished train.kge run")
    return path.read_text(encoding="utf-8").splitlines()


def lookup(names: list[str], key: str, what: str) -> int:
    """The id of `key`: a name as written in the data, else an integer id in range."""
    index = {n: i for i, n in enumerate(names)}
    if key in index:
        return index[key]
    if key.lstrip("-").isdigit() and 0 <= int(key) < len(names):
        return int(key)
    close = difflib.get_close_matches(key, names, n=3)
    raise DataError(f"unknown {what} {key!r}: neither a name in the run's {what}_ids.txt nor an "
                    f"id in [0, {len(names)})" + (f"; close: {', '.join(close)}" if close else ""))


def scores(run: Run, *, head: int | None, relation: int, tail: int | None) -> np.ndarray:
    """float32 [E]: every entity as the tail of (head, relation, ?) when ``tail`` is None,
    else as the head of (?, relation, tail)."""
    e, r = run.entities, run.relations
    if tail is None:
        out = run.model.score_sp_(e[[head]], r[[relation]], e)
    elif run.inverse is not None:  # as trained: (?, r, t) is the tail query (t, r^-1, ?)
        out = run.model.score_sp_(e[[tail]], run.inverse[[relation]], e)
    else:
        out = run.model.score__po(e, r[[relation]], e[[tail]])
    return np.asarray(out, np.float32)[0]


def known_answers(run: Run, *, head: int | None, relation: int, tail: int | None) -> np.ndarray:
    """Sorted ids that make a known triple (train + valid + test of the run's dataset)."""
    folder = run.summary.get("data_folder")
    if not folder or not Path(folder).is_dir():
        raise DataError(f"--filter: the run's dataset folder {folder!r} is not there; the "
                        "known triples are read from it")
    dataset = load_dataset(folder)
    if list(dataset.entity_ids) != run.entity_names:
        raise DataError(f"--filter: {folder} no longer has the run's entities (changed files?)")
    known = np.concatenate(list(dataset.splits.values()))
    if tail is None:
        hits = known[(known[:, 0] == head) & (known[:, 1] == relation), 2]
    else:
        hits = known[(known[:, 2] == tail) & (known[:, 1] == relation), 0]
    return np.unique(hits)


def predict(run: Run, *, head: str | None, relation: str, tail: str | None, top: int = 10,
            filtered: bool = False) -> dict:
    """The top-k answers of the query; with both head and tail, the tails of (head, relation,
    ?) and the rank of ``tail`` among them. Names or ids; see the module docstring."""
    if head is None and tail is None:
        raise DataError("give --head (to predict tails), --tail (to predict heads), or both")
    h = None if head is None else lookup(run.entity_names, head, "entity")
    r = lookup(run.relation_names, relation, "relation")
    t = None if tail is None else lookup(run.entity_names, tail, "entity")
    answer, query_tail = (t, None) if h is not None else (None, t)  # both: rank the tail
    s = scores(run, head=h, relation=r, tail=query_tail)
    excluded = np.zeros(len(s), bool)
    if filtered:
        excluded[known_answers(run, head=h, relation=r, tail=query_tail)] = True
        if answer is not None:
            excluded[answer] = False  # the answer asked about is always ranked
    order = np.lexsort((np.arange(len(s)), -s))  # best first; ties by id
    order = order[~excluded[order]][:top]
    result = {"query": [run.entity_names[h] if h is not None else "?", run.relation_names[r],
                        "?" if h is not None else run.entity_names[t]],
              "predicting": "tail" if h is not None else "head", "filtered": filtered,
              "known_not_ranked": int(excluded.sum()),
              "top": [{"rank": i + 1, "id": int(c), "name": run.entity_names[c],
                       "score": float(s[c])} for i, c in enumerate(order)]}
    if answer is not None:
        others = ~excluded
        others[answer] = False
        higher = int(np.count_nonzero(others & (s > s[answer])))
        ties = int(np.count_nonzero(others & (s == s[answer])))
        result["answer"] = {"id": int(answer), "name": run.entity_names[answer],
                            "score": float(s[answer]), "rank": higher + (ties + 1) // 2 + 1}
    return result


def format_result(run: Run, result: dict) -> str:
    c = run.config
    q = result["query"]
    lines = [f"run {run.folder}: {c['model']} dim {c['dim']}"
             + (", reciprocal" if c.get("reciprocal") else "")
             + f"; {len(run.entity_names)} entities, {len(run.relation_names)} relations",
             f"({q[0]}, {q[1]}, {q[2]}): top {len(result['top'])} {result['predicting']}s, "
             + (f"filtered ({result['known_not_ranked']} known answers not ranked)"
                if result["filtered"] else "unfiltered"),
             f"{'rank':>5}  {'score':>10}  {'id':>7}  entity"]
    lines += [f"{t['rank']:>5}  {t['score']:>10.4f}  {t['id']:>7}  {t['name']}"
              for t in result["top"]]
    if "answer" in result:
        a = result["answer"]
        lines.append(f"{a['name']} (id {a['id']}): score {a['score']:.4f}, rank {a['rank']} of "
                     f"the {'filtered ' if result['filtered'] else ''}candidates")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.kge.predict",
                                description="Top-k link prediction with a finished train.kge "
                                            "run's exported embeddings.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="the --out folder of a finished train.kge run")
    p.add_argument("--head", default=None, help="head entity (name or id); alone with "
                   "--relation: predict tails")
    p.add_argument("--relation", required=True, help="relation (name or id)")
    p.add_argument("--tail", default=None, help="tail entity (name or id); without --head: "
                   "predict heads; with --head: also print the rank of this tail")
    p.add_argument("--top", type=int, default=10, help="how many answers to list")
    p.add_argument("--filter", action="store_true", help="leave out answers that make a known "
                   "triple (train/valid/test of the run's dataset)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    try:
        run = load_run(args.run)
        result = predict(run, head=args.head, relation=args.relation, tail=args.tail,
                         top=args.top, filtered=args.filter)
    except DataError as e:
        p.exit(1, f"python -m train.kge.predict: error: {e}\n")
    print(json.dumps(result, indent=2) if args.json else format_result(run, result))


if __name__ == "__main__":
    main()
