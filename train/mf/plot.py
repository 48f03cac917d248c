"""Plots of an MF run (``python -m train.plot OUT_DIR`` reads OUT_DIR/metrics.jsonl).

Writes OUT_DIR/loss.png (training loss per epoch), OUT_DIR/rmse.png (valid RMSE per epoch,
plus the final valid/test RMSE from summary.json) and OUT_DIR/local_fraction.png (share of
PS pulls served locally, per epoch). Reuses the KGE plot's helpers.
"""

from __future__ import annotations

from pathlib import Path

from train.kge.plot import plot_run


def plot(folder: str | Path) -> list[Path]:
    """Write the PNG plots of the MF run in ``folder``; returns their paths."""
    return plot_run(folder, metric="rmse", ylabel="RMSE", title="rating prediction",
                    loss_label="loss per rating")
