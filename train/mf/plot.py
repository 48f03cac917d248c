"""Plots of an MF run (``python -m train.plot OUT_DIR`` reads OUT_DIR/metrics.jsonl).

Writes OUT_DIR/loss.png (training loss per epoch), OUT_DIR/rmse.png (valid RMSE per epoch,
plus the final valid/test RMSE from summary.json) and OUT_DIR/local_fraction.png (share of
PS pulls served locally, per epoch). Reuses the KGE plot's helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.kge.plot import _line_plot, read_metrics


def plot(folder: str | Path) -> list[Path]:
    """Write the PNG plots of the MF run in ``folder``; returns their paths."""
    folder = Path(folder)
    metrics = read_metrics(folder)
    epochs = [m["epoch"] for m in metrics]
    written = [folder / "loss.png", folder / "local_fraction.png", folder / "rmse.png"]
    _line_plot(written[0], epochs, [m["loss"] for m in metrics], ylabel="loss per rating",
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
                extra.append((f"final {split}", summary["epochs"], summary[split]["rmse"]))
    _line_plot(written[2], [m["epoch"] for m in evaluated],
               [m["valid"]["rmse"] for m in evaluated], ylabel="RMSE", title="rating prediction",
               extra=extra)
    return written
