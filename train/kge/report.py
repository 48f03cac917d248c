"""What train.kge prints on rank 0: the evaluation setup, one line per epoch, the results table.

Every number on the console says what it is: the results table names its filter and, when
``--max-eval`` cut a split, how many of its triples were ranked; the epoch line gives the
epoch's seconds, the estimated time left and the learning rate in force.
"""

from __future__ import annotations

from train.kge.evaluate import describe_filter

COLUMNS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


def subset(split: str, evaluated: int, total: int) -> str:
    """"test: 2,000 of 20,466 triples (--max-eval)", or "test: all 1,828 triples"."""
    if evaluated < total:
        return f"{split}: {evaluated:,} of {total:,} triples (--max-eval)"
    return f"{split}: all {total:,} triples"


def eval_setup(filter_mode: str, sizes: dict[str, tuple[int, int]]) -> str:
    """The line before training: how valid/test are ranked. sizes: split -> (ranked, total)."""
    parts = [subset(s, *sizes[s]) for s in ("valid", "test") if s in sizes]
    return (f"evaluation: {describe_filter(filter_mode)} (--filter {filter_mode}); "
            + ("; ".join(parts) if parts else "no valid/test split"))


def epoch_line(record: dict, epochs: int, history: list[dict], default_lr: float,
               first: int = 1) -> str:
    """One epoch: loss, speed, locality, compiles, seconds, ETA, learning rate, valid MRR.

    ETA: the mean seconds of this run's epochs (those of ``history``, which holds
    ``record``, from epoch ``first`` on: a resumed run's history also holds the epochs
    of the runs before it, on whatever machine and load those had) times the epochs
    left. The rate is ``record["lr"]`` when the run sets one (a schedule), else
    ``default_lr``.
    """
    done = ([r["seconds"] for r in history if "seconds" in r and r["epoch"] >= first]
            or [record["seconds"]])
    eta = sum(done) / len(done) * (epochs - record["epoch"])
    line = (f"epoch {record['epoch']:>3}/{epochs}  loss {record['loss']:.4f}  "
            f"{record['examples_per_s']:>9.0f} ex/s  local {record['local_fraction']:.3f}  "
            f"compiles {record['compiles']}  {record['seconds']:.1f} s  ETA {_duration(eta)}  "
            f"lr {record.get('lr', default_lr):.3g}")
    if record.get("valid"):
        line += f"  valid MRR {record['valid']['mrr']:.4f}"
    return line


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _row(label: str, m: dict, width: int, count="") -> str:
    return f"{label:<{width}}{count:>9}" + "".join(
        f"{m[c]:>10.1f}" if c == "mr" else f"{m[c]:>10.4f}" for c in COLUMNS)


def results_table(summary: dict) -> str:
    """The final metrics: per split, per direction, per relation type, with the filter and
    the subset sizes in the heading."""
    mode = summary["config"].get("filter", "all")
    sizes = summary.get("split_sizes", {})
    heading = [f"results, {describe_filter(mode)} (--filter {mode})"]
    heading += [subset(s, summary[s]["num_triples"], sizes.get(s, summary[s]["num_triples"]))
                for s in ("valid", "test") if summary.get(s)]
    width = 12
    rows = ["; ".join(heading), f"{'':<{width}}{'triples':>9}" + "".join(f"{c:>10}" for c in COLUMNS)]
    for split in ("valid", "test"):
        m = summary.get(split)
        if m is None:
            continue
        rows.append(_row(split, m, width, m["num_triples"]))
        for d in ("head", "tail"):
            if d in m:
                rows.append(_row(f"  {d} queries", m[d], width))
    test = summary.get("test") or summary.get("valid")
    if test and test.get("by_relation_type"):
        split = "test" if summary.get("test") else "valid"
        rows.append(f"{split} by relation type (from train: heads per tail / tails per head "
                    "> 1.5 is N)")
        rows.append(f"{'type':<{width}}{'triples':>9}{'relations':>10}{'mrr':>10}"
                    f"{'head mrr':>10}{'tail mrr':>10}{'hits@10':>10}")
        for kind, m in test["by_relation_type"].items():
            rows.append(f"{kind:<{width}}{m['num_triples']:>9}{m['relations']:>10}"
                        f"{m['mrr']:>10.4f}{m['head']['mrr']:>10.4f}{m['tail']['mrr']:>10.4f}"
                        f"{m['hits@10']:>10.4f}")
    # Early stopping ends a run before its --epochs budget: say how many epochs ran.
    trained = summary.get("epochs_trained", summary["epochs"])
    budget = f" (of up to {summary['epochs']})" if trained != summary["epochs"] else ""
    rows.append(f"{trained} epochs{budget} in {summary['seconds']:.1f} s on "
                f"{summary['ranks']} rank(s); local fraction of pulls "
                f"{summary['ps']['local_fraction']:.3f}")
    return "\n".join(rows)
