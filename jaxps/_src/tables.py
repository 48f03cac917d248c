"""Table specifications and their deterministic, placement-independent initial values."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from .errors import InputError

INITS = ("normal", "uniform", "zeros")


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One embedding table held by the parameter server.

    A row is the parameter (``dim`` columns) followed by optimizer state
    (``state_dim`` columns, e.g. an AdaGrad accumulator), so that relocation and
    replication move the state together with the parameter. ``pull`` returns whole
    rows of ``width = dim + state_dim`` float32 columns; ``push``/``set`` take them.

    Attributes:
      num_keys: keys are the integers ``[0, num_keys)``.
      dim: parameter columns per row.
      init: ``"normal"`` (N(init_mean, init_scale^2)), ``"uniform"``
        (U(init_mean - init_scale, init_mean + init_scale)) or ``"zeros"`` for the parameter
        columns.
      init_scale: standard deviation / half-width of the initial values.
      state_dim: optimizer-state columns after the parameter (0 for none).
      state_init: initial value of every state column (e.g. AdaGrad's initial accumulator).
      seed: initial values depend only on (seed, table name, key, column), never on how
        many ranks there are or where a key lives.
      init_mean: mean (normal) / center (uniform) of the initial values; torch's
        ``uniform_(a, b)`` is ``init_scale = (b - a) / 2, init_mean = (a + b) / 2``.
    """

    num_keys: int
    dim: int
    init: str = "normal"
    init_scale: float = 0.1
    state_dim: int = 0
    state_init: float = 0.0
    seed: int = 0
    init_mean: float = 0.0

    def __post_init__(self):
        for field in ("num_keys", "dim"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"TableSpec.{field} must be a positive int, got {value!r}")
        if not isinstance(self.state_dim, (int, np.integer)) or self.state_dim < 0:
            raise InputError(f"TableSpec.state_dim must be an int >= 0, got {self.state_dim!r}")
        for field in ("init_scale", "init_mean"):
            value = getattr(self, field)
            if not isinstance(value, (int, float, np.integer, np.floating)) or \
                    not np.isfinite(value):
                raise InputError(f"TableSpec.{field} must be a finite number, got {value!r}")
        if self.init not in INITS:
            raise InputError(f"TableSpec.init must be one of {INITS}, got {self.init!r}")
        if self.num_keys >= 2**62:
            raise InputError(f"TableSpec.num_keys={self.num_keys} is too large (max 2**62)")

    @property
    def width(self) -> int:
        """Float32 columns per stored row: parameter followed by optimizer state."""
        return self.dim + self.state_dim


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash (uint64 -> uint64); wraps around by design."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _uniform01(counter: np.ndarray, base: np.uint64) -> np.ndarray:
    """Uniform float64 in (0, 1) from a counter; 53 random bits."""
    bits = _splitmix64(counter ^ base) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / 2**53)


def initial_rows(spec: TableSpec, name: str, keys: np.ndarray) -> np.ndarray:
    """Initial rows of ``keys`` (int64 [n]) as float32 [n, width].

    A hash of (seed, table name, key, column) rather than a sequential RNG, so that
    every rank computes the same value for a key without materializing the table,
    and 1-rank and N-rank runs start from identical parameters.
    """
    n = len(keys)
    rows = np.empty((n, spec.width), np.float32)
    rows[:, spec.dim:] = spec.state_init
    if spec.init == "zeros" or n == 0:
        rows[:, :spec.dim] = 0.0
        return rows
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([spec.seed * 1_000_003 + zlib.crc32(name.encode())],
                                    np.uint64))[0]
        cols = np.arange(spec.dim, dtype=np.uint64)
        counter = keys.astype(np.uint64)[:, None] * np.uint64(2 * spec.dim) + 2 * cols[None, :]
        u1 = _uniform01(counter, base)
        if spec.init == "uniform":
            values = (2.0 * u1 - 1.0) * spec.init_scale
        else:
            u2 = _uniform01(counter + np.uint64(1), base)
            values = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2) * spec.init_scale
    if spec.init_mean:  # (only then: keeps every earlier table bit for bit)
        values += spec.init_mean
    rows[:, :spec.dim] = values
    return rows
