"""Typed config dataclasses at the edge: fields with help, choices and numeric ranges, and the
argparse command line generated from them (used by train.kge and train.mf).

Why one place: every entrypoint must refuse the same way a NaN, an infinity or a number out of
range (``--lr nan`` used to train to a NaN loss, or to end in a library message that told a CLI
user to pass ``check_finite=False``), with an argparse-style message and status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import field


def opt(default, help: str, choices=None, *, low=None, high=None, low_open=False,
        high_open=False):
    """A field with its help text, valid choices, and numeric range [low, high] (``*_open``:
    the bound itself is excluded); every numeric field must also be finite."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low,
                                            "high": high, "low_open": low_open,
                                            "high_open": high_open})


def check_fields(config) -> None:
    """Raise ValueError (naming the --flag) for a value outside its field's choices or range.

    Call from the dataclass's ``__post_init__``.
    """
    for f in dataclasses.fields(config):
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
        if f.type in ("int", "float", int, float):
            check_number(flag, value, f.metadata, integer=f.type in ("int", int))


def check_number(flag: str, value, meta: dict, *, integer: bool) -> None:
    """Raise ValueError unless ``value`` is a finite number within the field's range."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)) or not math.isfinite(value):
        raise ValueError(f"{flag} must be {kind}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    bad_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    bad_high = high is not None and (value >= high if meta.get("high_open") else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if meta.get("low_open") else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if meta.get("high_open") else "]")
        rng = (f"in {lo}, {hi}" if low is not None and high is not None else
               f"{'>' if meta.get('low_open') else '>='} {low}" if low is not None else
               f"{'<' if meta.get('high_open') else '<='} {high}")
        raise ValueError(f"{flag} must be {rng}, got {value!r}")


def resume_value(resume) -> str:
    """``Config(resume=True)`` from code means the newest checkpoint ("latest")."""
    if isinstance(resume, bool):
        return "latest" if resume else ""
    return resume


def make_parser(config_cls, prog: str, description: str) -> argparse.ArgumentParser:
    """One --flag per field of ``config_cls``, help and defaults from it; ``--resume`` alone
    means "latest" (``--resume auto`` / ``--resume PATH`` as given)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": f.default, "help": f.metadata["help"]}
        if f.name == "resume":
            kwargs.update(nargs="?", const="latest", metavar="latest|auto|PATH")
        elif f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[f.type]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        p.add_argument(flag, **kwargs)
    return p


def parse_config(config_cls, parser: argparse.ArgumentParser, argv=None):
    """``config_cls`` from command-line arguments; a refused value is an argparse error
    (usage line, status 2)."""
    args = parser.parse_args(argv)
    try:
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))
