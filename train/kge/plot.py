"""Plots of a training run: ``python -m train.kge.plot OUT_DIR`` (reads OUT_DIR/metrics.jsonl).

Writes OUT_DIR/loss.png (training loss per epoch), OUT_DIR/mrr.png (valid MRR at the epochs
that evaluated, plus the final valid/test MRR from summary.json) and
OUT_DIR/local_fraction.png (share of PS pulls served locally, per epoch). Every plot is titled
with the run (dataset, model, loss: from summary.json, so once the run has finished; before,
the folder's name), has whole-number epoch ticks and a legend naming each line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_LOSSES = {"ce": "cross-entropy loss", "bce": "binary cross-entropy loss",
           "margin": "margin ranking loss"}


def read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass the --out folder of a "
                                "`python -m train.kge` or `python -m train.mf` run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(folder: Path) -> dict:
    """summary.json of a finished run, else {} (a run still training has none)."""
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def kge_label(summary: dict, folder: Path) -> str:
    """"umls · complex dim 256 · cross-entropy loss", from the run's summary."""
    config = summary.get("config")
    if not config:
        return folder.name
    loss = _LOSSES.get(config.get("loss"), f"{config.get('loss')} loss")
    if config.get("loss") == "margin":
        loss += f" (margin {config.get('margin')})"
    data = summary.get("dataset") or config.get("data") or "synthetic graph"
    return f"{data} · {config.get('model')} dim {config.get('dim')} · {loss}"


def generic_label(summary: dict, folder: Path) -> str:
    """"<dataset> · dim D · <optimizer>" of any run's summary; the folder's name without one."""
    config = summary.get("config")
    if not config:
        return folder.name
    data = summary.get("dataset") or config.get("data") or "synthetic data"
    return f"{data} · dim {config.get('dim')} · {config.get('optimizer')}"


def _line_plot(path: Path, xs, ys, *, ylabel: str, title: str, label: str, extra=()) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    if len(xs):
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    for name, x, y in extra:
        ax.scatter([x], [y], marker="*", s=80, label=name, zorder=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:  # nothing to draw yet (no validation): no legend
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_run(folder: str | Path, *, metric: str, ylabel: str, title: str,
             loss_label: str = "loss", describe: Callable[[dict, Path], str] | None = None
             ) -> list[Path]:
    """The PNG plots of a run (KGE or MF) in ``folder``: training loss, local share of
    pulls, and the valid ``metric`` (``metrics.jsonl``'s ``valid[metric]``) over epochs, with
    the final valid/test values of ``summary.json``; returns their paths.

    ``describe(summary, folder)`` names the run in every title (default: the folder's name).
    """
    folder = Path(folder)
    metrics = read_metrics(folder)
    summary = read_summary(folder)
    run = (describe or generic_label)(summary, folder)
    epochs = [m["epoch"] for m in metrics]
    written = [folder / "loss.png", folder / "local_fraction.png", folder / f"{metric}.png"]
    _line_plot(written[0], epochs, [m["loss"] for m in metrics], ylabel=loss_label,
               title=f"training loss\n{run}", label=f"training {loss_label} (epoch mean)")
    _line_plot(written[1], epochs, [m["local_fraction"] for m in metrics],
               ylabel="local share of pulls", title=f"PS accesses served locally\n{run}",
               label="pulls served by the own rank")
    evaluated = [m for m in metrics if m.get("valid")]
    extra = []
    # The final metrics are those of the tested model: the best epoch when it was restored
    # (early stopping's keep), else the last epoch trained. A run still training (or
    # interrupted) has no summary.json yet and no final metrics: only its epochs are drawn.
    at = (summary["best_epoch"] if summary.get("best_restored") and summary.get("best_epoch")
          else summary.get("epochs_trained") or summary.get("epochs"))
    for split in ("valid", "test"):
        if summary.get(split):
            extra.append((f"final {split} {ylabel}", at, summary[split][metric]))
    _line_plot(written[2], [m["epoch"] for m in evaluated],
               [m["valid"][metric] for m in evaluated], ylabel=ylabel,
               title=f"{title}\n{run}", label=f"valid {ylabel} (--eval-every)", extra=extra)
    return written


def plot(folder: str | Path) -> list[Path]:
    """Write the PNG plots of the KGE run in ``folder``; returns their paths."""
    summary = read_summary(Path(folder))
    mode = (summary.get("config") or {}).get("filter", "all")
    ylabel = {"all": "filtered MRR", "train": "MRR (train-filtered)", "none": "raw MRR"}[mode]
    loss = _LOSSES.get((summary.get("config") or {}).get("loss"), "loss")
    return plot_run(folder, metric="mrr", ylabel=ylabel, title="link prediction",
                    loss_label=loss, describe=kge_label)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.kge.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the --out folder of a train.kge run")
    for path in plot(p.parse_args(argv).folder):
        print(path)


if __name__ == "__main__":
    main()
