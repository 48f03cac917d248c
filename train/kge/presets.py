"""Config files for ``python -m train.kge``: ``--config FILE.yaml`` and ``--preset libkge``.

A config file is a YAML mapping of KgeConfig field names (``batch_size``, not ``--batch-size``)
to values, read into the same typed dataclass as the command line: its values become the
parser's defaults, so every flag given on the command line overrides the file. An unknown key,
or a value of the wrong type or out of range, is an error naming the file, line and key. The
optional key ``search`` maps fields to the values (a list) or ranges (``{low, high, log}``)
that ``python -m train.kge.search`` draws from; training ignores it.

``--preset libkge`` reads ``configs/<dataset>-<model>.yaml`` (dataset: the --data name or
folder name, lower case), one file per dataset x model, taken from LibKGE's and CoDEx's
published best configs (each file cites its source). Precedence: preset < --config FILE <
command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_NOT_SETTINGS = ("config", "preset")  # choose files; meaningless inside one
SEARCH_KEY = "search"


def _fields() -> dict:
    from train.kge.config import KgeConfig
    return {f.name: f for f in dataclasses.fields(KgeConfig)}


def _key_lines(text: str) -> dict:
    """Line (1-based) of each top-level key, for messages."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value}


def _coerce(value, kind: str, where: str):
    """``value`` as the field's type, or ValueError saying what was expected."""
    if kind in ("bool", bool):
        if isinstance(value, bool):
            return value
    elif kind in ("int", int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in ("float", float):
        # PyYAML reads 1e-3 (no dot) as a string (YAML 1.1): accept what float() accepts.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind in ("str", str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"{where}: expected {kind}, got {value!r}")


def load_file(path: str | Path) -> tuple[dict, dict]:
    """(settings, search space) of config file ``path``; ValueError naming file:line and key.

    Settings are checked field by field (type, choices, range) with the other fields at their
    defaults, so that a bad value is reported at its line, not at the end of parsing.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got "
                         f"{type(data).__name__}")
    fields = _fields()
    settings, search = {}, {}
    for key, value in data.items():
        where = f"{path}:{lines.get(key, '?')}: key {key!r}"
        if key == SEARCH_KEY:
            search = _search_space(value, fields, f"{path}:{lines.get(key, '?')}")
            continue
        if key not in fields or key in _NOT_SETTINGS:
            valid = ", ".join(k for k in fields if k not in _NOT_SETTINGS)
            hint = f" (write {key.replace('-', '_')!r})" if "-" in str(key) else ""
            raise ValueError(f"{where}: unknown key{hint}; valid keys: {valid}, {SEARCH_KEY}")
        settings[key] = _coerce(value, fields[key].type, where)
        _check_value(key, settings[key], where)
    return settings, search


def _check_value(key: str, value, where: str) -> None:
    try:
        _check_one(_fields()[key], value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _check_one(f, value) -> None:
    from train.common.options import check_number
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
    if f.type in ("int", "float", int, float):
        check_number(f.name, value, f.metadata, integer=f.type in ("int", int))


def _search_space(value, fields: dict, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: key 'search': expected a mapping of option names to lists of values or "
                         "{low, high, log} ranges")
    space = {}
    for key, choices in value.items():
        at = f"{where}: key 'search.{key}'"
        if key not in fields or key in _NOT_SETTINGS:
            raise ValueError(f"{at}: unknown option {key!r}")
        kind = fields[key].type
        if isinstance(choices, dict):
            if set(choices) - {"low", "high", "log"} or not {"low", "high"} <= set(choices):
                raise ValueError(f"{at}: a range is {{low: A, high: B, log: true|false}}")
            low, high = (_coerce(choices[k], kind, at) for k in ("low", "high"))
            if not (isinstance(low, (int, float)) and low <= high) or \
                    (choices.get("log") and low <= 0):
                raise ValueError(f"{at}: need low <= high (and low > 0 with log)")
            space[key] = {"low": low, "high": high, "log": bool(choices.get("log"))}
        else:
            items = choices if isinstance(choices, list) else [choices]
            space[key] = [_coerce(c, kind, at) for c in items]
            for c in space[key]:
                try:
                    _check_one(fields[key], c)
                except ValueError as e:
                    raise ValueError(f"{at}: {e}") from None
    return space


def dataset_name(data: str) -> str:
    """The preset name of --data: a registered name or the last folder of a path, lower case."""
    return Path(data.rstrip("/")).name.lower() if data else "synthetic"


def preset_path(data: str, model: str) -> Path:
    """configs/<dataset>-<model>.yaml; ValueError listing the presets there is none."""
    path = CONFIGS / f"{dataset_name(data)}-{model}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise ValueError(f"--preset libkge: no preset for --data {data or '(synthetic)'} "
                         f"--model {model} ({path} does not exist); presets: "
                         f"{', '.join(have) or 'none'}")
    return path


def config_files(argv) -> list[Path]:
    """The files that ``argv`` names, in the order they apply (preset, then --config)."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--config", "--preset", "--data", "--model"):
        pre.add_argument(flag, default="")
    known, _ = pre.parse_known_args(argv)
    files = []
    if known.preset:
        if known.preset != "libkge":
            raise ValueError(f"--preset {known.preset!r}: the only preset is libkge")
        data, model = known.data, known.model
        if known.config:  # --data / --model may come from the file
            from_file = load_file(known.config)[0]
            data, model = data or from_file.get("data", ""), model or from_file.get("model", "")
        files.append(preset_path(data, model or "complex"))
    if known.config:
        files.append(Path(known.config))
    return files


def apply_config_files(parser: argparse.ArgumentParser, argv=None) -> dict:
    """Set ``parser``'s defaults from the files ``argv`` names (``--preset``, ``--config``),
    so that flags on the command line override them; returns the settings applied. A bad
    file is a parser error (usage line, status 2) naming file, line and key."""
    try:
        settings = {}
        for path in config_files(argv):
            settings.update(load_file(path)[0])
    except ValueError as e:
        parser.error(str(e))
    parser.set_defaults(**settings)
    return settings

