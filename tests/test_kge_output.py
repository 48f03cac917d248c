"""Console output and plots of train.kge: progress lines off a terminal, the epoch line, the
results table, and plot titles / ticks / legends (also of a run still training)."""

from __future__ import annotations

import io
import json

import matplotlib.figure
import pytest

from train.kge import plot, report
from train.common.progress import EpochProgress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_is_one_line_per_ten_percent():
    stream = io.StringIO()
    with EpochProgress(154, "epoch 3", stream=stream) as bar:
        for _ in range(154):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 9
    assert [int(line.split(": ")[1].split("%")[0]) for line in lines] == \
        [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert lines[0].startswith("epoch 3: 10% (16/154 batches) ") and "ETA" in lines[0]


def test_progress_on_a_terminal_is_a_bar():
    stream = _Tty()
    with EpochProgress(20, "epoch 1", stream=stream) as bar:
        for _ in range(20):
            bar.update()
    assert "\r" in stream.getvalue() and "epoch 1" in stream.getvalue()
    with pytest.raises(ValueError, match="step must be a percentage"):
        EpochProgress(10, "x", step=0)


def _record(epoch, seconds, **kw):
    return {"epoch": epoch, "loss": 1.5, "examples_per_s": 1000.0, "local_fraction": 1.0,
            "compiles": 1, "seconds": seconds, **kw}


def test_epoch_line_has_seconds_eta_and_learning_rate():
    history = [_record(1, 10.0), _record(2, 20.0)]
    line = report.epoch_line(history[-1], 10, history, 0.1)
    assert "20.0 s  ETA 2 min 00 s  lr 0.1" in line  # mean 15 s x 8 epochs left
    scheduled = _record(3, 15.0, lr=0.025, valid={"mrr": 0.3})
    line = report.epoch_line(scheduled, 3, history + [scheduled], 0.1)
    assert "ETA 0 s  lr 0.025  valid MRR 0.3000" in line


def test_epoch_line_eta_counts_only_this_runs_epochs():
    # A resumed run: epochs 1-2 ran before (slowly, elsewhere), 3-4 in this run.
    history = [_record(1, 100.0), _record(2, 100.0), _record(3, 2.0), _record(4, 4.0)]
    line = report.epoch_line(history[-1], 10, history, 0.1, first=3)
    assert "ETA 18 s" in line  # mean 3 s x 6 epochs left, not 51.5 s x 6


def _metrics(mrr):
    m = {"mrr": mrr, "mr": 10.0, "hits@1": 0.1, "hits@3": 0.2, "hits@10": 0.5}
    return m | {"head": dict(m), "tail": dict(m)}


def test_results_table_names_filter_subset_directions_and_types():
    by_type = {"1-N": _metrics(0.4) | {"num_triples": 30, "relations": 3},
               "N-N": _metrics(0.2) | {"num_triples": 1970, "relations": 200}}
    summary = {"valid": _metrics(0.3) | {"num_triples": 2000},
               "test": _metrics(0.31) | {"num_triples": 2000, "by_relation_type": by_type},
               "split_sizes": {"train": 272115, "valid": 17535, "test": 20466},
               "config": {"filter": "all"}, "epochs": 5, "seconds": 12.0, "ranks": 1,
               "ps": {"local_fraction": 1.0}}
    table = report.results_table(summary)
    first = table.splitlines()[0]
    assert "filtered against train+valid+test (--filter all)" in first
    assert "test: 2,000 of 20,466 triples (--max-eval)" in first
    assert "  head queries" in table and "  tail queries" in table
    assert any(line.startswith("1-N") and "30" in line and "0.4000" in line
               for line in table.splitlines())
    summary["config"]["filter"] = "none"
    summary["test"]["num_triples"] = summary["split_sizes"]["test"] = 2000
    assert "unfiltered (raw ranks) (--filter none)" in report.results_table(summary)
    assert "test: all 2,000 triples" in report.results_table(summary)
    assert "5 epochs in 12.0 s on 1 rank(s)" in report.results_table(summary)
    # stopped early: the epochs that ran, and the budget
    summary["epochs_trained"] = 3
    assert "3 epochs (of up to 5) in 12.0 s" in report.results_table(summary)


def test_plots_are_titled_with_integer_ticks_and_legends(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    records = [_record(e, 1.0) | ({"valid": {"mrr": 0.1 * e}} if e % 2 == 0 else {})
               for e in range(1, 8)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.json").write_text(json.dumps({
        "dataset": "fb15k-237", "epochs": 7, "valid": {"mrr": 0.33}, "test": {"mrr": 0.34},
        "config": {"model": "complex", "dim": 256, "loss": "ce", "filter": "all"}}))
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, path, **kw: figures.append((path.name, self)))
    plot.plot(out)
    assert [name for name, _ in figures] == ["loss.png", "local_fraction.png", "mrr.png"]
    for name, fig in figures:
        ax = fig.axes[0]
        assert "fb15k-237 · complex dim 256 · cross-entropy loss" in ax.get_title()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        lines = len(ax.get_lines()) + len(ax.collections)
        assert len(legend) == lines, (name, legend)
    mrr_legend = [t.get_text() for t in figures[2][1].axes[0].get_legend().get_texts()]
    assert mrr_legend == ["valid filtered MRR (--eval-every)", "final valid filtered MRR",
                          "final test filtered MRR"]


def test_plots_of_a_run_still_training(tmp_path, monkeypatch):
    """The titles fall back to the folder's name before summary.json exists (documented), but
    the final-metrics marker read summary["epochs"]: KeyError: 'epochs' on any run still
    training or interrupted, and on one whose metrics.jsonl is still empty."""
    out = tmp_path / "running"
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(json.dumps(_record(e, 1.0)) + "\n"
                                               for e in (1, 2)))
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, path, **kw: figures.append((path.name, self)))
    plot.plot(out)
    assert [name for name, _ in figures] == ["loss.png", "local_fraction.png", "mrr.png"]
    assert "running" in figures[0][1].axes[0].get_title()
    assert list(figures[0][1].axes[0].get_lines()[0].get_xdata()) == [1, 2]
    (out / "metrics.jsonl").write_text("")
    plot.plot(out)
    assert len(figures) == 6


def test_plot_of_a_folder_without_metrics_is_a_message(tmp_path, capsys):
    from train import plot as any_plot
    with pytest.raises(SystemExit) as e:
        any_plot.main([str(tmp_path)])
    assert e.value.code == 1
    assert "metrics.jsonl not found; pass the --out folder of a `python -m train.kge` or " \
           "`python -m train.mf` run" in capsys.readouterr().err
