"""Plots of a training run: ``python -m train.kge.plot OUT_DIR`` (reads OUT_DIR/metrics.jsonl).

Writes OUT_DIR/loss.png (training loss per epoch), OUT_DIR/mrr.png (valid MRR at the epochs
that evaluated, plus the final valid/test MRR from summary.json) and
OUT_DIR/local_fraction.png (share of PS pulls served locally, per epoch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass the --out folder of a "
                                "`python -m train.kge --out DIR` run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _line_plot(path: Path, xs, ys, *, ylabel: str, title: str, extra=()) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(xs, ys, marker="o", markersize=3)
    for label, x, y in extra:
        ax.scatter([x], [y], marker="*", s=80, label=label, zorder=3)
    if extra:
        ax.legend()
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_run(folder: str | Path, *, metric: str, ylabel: str, title: str,
             loss_label: str = "loss") -> list[Path]:
    """The PNG plots of a run (KGE or MF) in ``folder``: training loss, local share of
    pulls, and the valid ``metric`` (``metrics.jsonl``'s ``valid[metric]``) over epochs, with
    the final valid/test values of ``summary.json``; returns their paths."""
    folder = Path(folder)
    metrics = read_metrics(folder)
    epochs = [m["epoch"] for m in metrics]
    written = [folder / "loss.png", folder / "local_fraction.png", folder / f"{metric}.png"]
    _line_plot(written[0], epochs, [m["loss"] for m in metrics], ylabel=loss_label,
               title="training loss")
    _line_plot(written[1], epochs, [m["local_fraction"] for m in metrics],
               ylabel="local share of pulls", title="PS accesses served locally")
    evaluated = [m for m in metrics if m.get("valid")]
    extra = []
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        for split in ("valid", "test"):
            if summary.get(split):
                extra.append((f"final {split}", summary["epochs"], summary[split][metric]))
    _line_plot(written[2], [m["epoch"] for m in evaluated],
               [m["valid"][metric] for m in evaluated], ylabel=ylabel, title=title,
               extra=extra)
    return written


def plot(folder: str | Path) -> list[Path]:
    """Write the PNG plots of the KGE run in ``folder``; returns their paths."""
    return plot_run(folder, metric="mrr", ylabel="filtered MRR", title="link prediction")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.kge.plot", description=__doc__)
    p.add_argument("folder", help="the --out folder of a train.kge run")
    for path in plot(p.parse_args(argv).folder):
        print(path)


if __name__ == "__main__":
    main()
