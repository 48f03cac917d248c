"""``python -m train.plot DIR``: PNG plots of a training run's metrics.

KGE runs (train/kge/plot.py) and MF runs (train/mf/plot.py, recognized by the ``"task":
"mf"`` of their metrics records) write the same kind of files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(folder: str | Path) -> list[Path]:
    """Write the plots of the run in ``folder`` (KGE or MF); returns their paths."""
    summary = Path(folder) / "summary.json"
    metrics = Path(folder) / "metrics.jsonl"
    text = summary.read_text() if summary.is_file() else ""
    first = metrics.read_text().split("\n", 1)[0] if metrics.is_file() else ""
    if '"task": "mf"' in first or '"schedule"' in text:  # MF records / MfConfig in the summary
        from train.mf.plot import plot as mf_plot
        return mf_plot(folder)
    from train.kge.plot import plot as kge_plot
    return kge_plot(folder)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.plot", description=__doc__)
    p.add_argument("folder", help="the --out folder of a train.kge or train.mf run")
    try:
        written = plot(p.parse_args(argv).folder)
    except FileNotFoundError as e:  # not a run folder: a message, not a traceback
        p.exit(1, f"python -m train.plot: error: {e}\n")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
