"""--config FILE.yaml and --preset libkge (train/kge/presets.py): the file fills the same
KgeConfig as the command line, flags override it, and a bad key or value is an error naming
the file, the line and the key."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from train.kge import presets
from train.kge.config import KgeConfig, parse_args


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_file_fills_the_config_and_flags_override_it(tmp_path):
    path = write(tmp_path, "model: distmult\ndim: 64\nlr: 1e-3\nreciprocal: false\n"
                           "train_type: KvsAll\nlabel_smoothing: 0.1\n")
    c = parse_args(["--config", str(path)])
    assert (c.model, c.dim, c.lr, c.reciprocal, c.train_type, c.label_smoothing) == \
        ("distmult", 64, 0.001, False, "KvsAll", 0.1)  # 1e-3: a string to PyYAML, a float here
    c = parse_args(["--config", str(path), "--dim", "32", "--reciprocal"])
    assert (c.dim, c.reciprocal, c.model) == (32, True, "distmult")
    assert c.config == str(path)


def test_unknown_key_names_file_line_and_key(tmp_path, capsys):
    path = write(tmp_path, "dim: 64\n\nbatch-size: 10\n")
    err = error_of(["--config", str(path)], capsys)
    assert f"{path}:3: key 'batch-size': unknown key (write 'batch_size')" in err
    valid = err.split("valid keys: ", 1)[1].split()
    assert {"data,", "model,", "dim,", "batch_size,"} <= set(valid), err
    path = write(tmp_path, "dim: 64\nfoo: 1\n")
    assert f"{path}:2: key 'foo': unknown key" in error_of(["--config", str(path)], capsys)


@pytest.mark.parametrize("text,message", [
    ("dim: sixty\n", ":1: key 'dim': expected int, got 'sixty'"),
    ("lr: -1\n", ":1: key 'lr': lr must be > 0, got -1.0"),
    ("model: complx\n", ":1: key 'model': unknown model 'complx'; valid: complex"),
    ("reciprocal: 3\n", ":1: key 'reciprocal': expected bool, got 3"),
    ("- dim\n", "expected a mapping of option names to values, got list"),
    ("dim: [1\n", "not valid YAML"),
])
def test_bad_values_name_the_line(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    assert message in error_of(["--config", str(path)], capsys)


def test_missing_file_is_said(tmp_path, capsys):
    assert "--config " + str(tmp_path / "no.yaml") + ": cannot read it" in error_of(
        ["--config", str(tmp_path / "no.yaml")], capsys)


def test_search_section_is_read_and_checked(tmp_path):
    path = write(tmp_path, "dim: 16\nsearch:\n  lr: {low: 0.01, high: 0.5, log: true}\n"
                           "  train_type: [1vsAll, KvsAll]\n")
    settings, space = presets.load_file(path)
    assert settings == {"dim": 16}
    assert space == {"lr": {"low": 0.01, "high": 0.5, "log": True},
                     "train_type": ["1vsAll", "KvsAll"]}
    assert parse_args(["--config", str(path)]).dim == 16  # training ignores search:
    bad = write(tmp_path, "search:\n  train_type: [1vsAll, Kvsall]\n")
    with pytest.raises(ValueError, match=":1: key 'search.train_type': unknown train_type 'Kvsall'"):
        presets.load_file(bad)


def test_preset_picks_the_dataset_model_file(tmp_path, capsys):
    c = parse_args(["--preset", "libkge", "--data", "../shared/data/codex-s"])
    assert (c.data, c.dim, c.train_type, c.optimizer, c.lr_schedule) == \
        ("../shared/data/codex-s", 512, "1vsAll", "adam", "plateau")
    c = parse_args(["--preset", "libkge", "--data", "fb15k-237", "--epochs", "3"])
    assert (c.epochs, c.negatives, c.dropout) == (3, 1000, 0.5)
    # --data from the --config file picks the preset; the file then overrides the preset.
    path = write(tmp_path, "data: codex-s\nbatch_size: 64\n")
    c = parse_args(["--preset", "libkge", "--config", str(path)])
    assert (c.data, c.dim, c.batch_size) == ("codex-s", 512, 64)
    err = error_of(["--preset", "libkge", "--data", "nations", "--model", "rotate"], capsys)
    assert "no preset for --data nations --model rotate" in err and "codex-s-complex" in err


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path}: cite the source in a comment at the top"
    settings, _ = presets.load_file(path)
    assert KgeConfig(**settings)  # valid together, too
    assert parse_args(["--config", str(path)]).model == settings["model"]
