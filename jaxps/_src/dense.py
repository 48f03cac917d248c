"""DenseTrainer: the same training without a PS -- whole tables as jax arrays, one process.

The reference a PS run is measured and tested against: the same tables (initial values
from ``TableSpec``, so a 1-rank PS run starts from identical rows), the same loss, row
optimizer and batches as ``SparseTrainer``, through the same batch pipeline
(``pipeline.Prefetcher``, ``read_batch``, bucket sizes), but each table is one jax array
and a step is one jitted call that gathers the batch's rows, computes loss and gradients,
applies the row optimizer and scatters the new rows back, with the tables donated so XLA
updates them in place. Steps are dispatched asynchronously: the host never waits for a
step except to read the losses at the end. For tables that fit one process's memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Callable, NamedTuple

import jax
import numpy as np

from . import fused
from .errors import InputError
from .pipeline import Prefetcher, bucket_size, read_batch
from .tables import initial_rows
from .trainer import loss_and_row_deltas

_CHUNK = 1 << 16   # keys per chunk when computing initial rows (bounds temporary memory)


class _Item(NamedTuple):
    keys: dict
    data: object
    num_examples: int


class DenseMetrics(NamedTuple):
    """What ``DenseTrainer.train`` measured (field meanings as in ``jaxps.EpochMetrics``)."""

    losses: list       # float per batch
    examples: int
    batches: int
    seconds: float
    compiles: int      # traces of the step so far (cumulative)
    new_compiles: int


def initial_table(spec, name: str) -> np.ndarray:
    """float32 [num_keys, width]: every row's initial value, as the PS would create it."""
    out = np.empty((spec.num_keys, spec.width), np.float32)
    for a in range(0, spec.num_keys, _CHUNK):
        keys = np.arange(a, min(a + _CHUNK, spec.num_keys), dtype=np.int64)
        out[a:a + len(keys)] = initial_rows(spec, name, keys)
    return out


class DenseTrainer:
    """Train ``loss_fn`` on whole in-memory tables: SparseTrainer's semantics, no PS.

    Args:
      tables: table name -> jaxps.TableSpec (rows: parameter then optimizer state).
      loss_fn: pure JAX ``(rows, data) -> scalar`` as for ``jaxps.SparseTrainer``.
      optimizers: table name -> jaxps.RowOptimizer (tables not listed are not trained).
      min_bucket: the smallest padded unique-key count (as the trainer's).
      max_keys: table -> most unique keys of a batch: one padded size, as the trainer's.
      steps_per_call: batches per jitted call (a ``lax.scan`` of the step, as
        SparseTrainer's); the same rows and losses as one per call, less dispatch.

    Thread-safety: one thread drives a trainer.
    """

    def __init__(self, tables: Mapping, loss_fn: Callable, optimizers: Mapping, *,
                 min_bucket: int = 64, max_keys: Mapping | None = None,
                 steps_per_call: int = 1):
        self._opt = dict(optimizers)
        self.steps_per_call = steps_per_call
        # Padded sizes as SparseTrainer's: fixed by max_keys, else only growing.
        self._floor = {t: bucket_size(int((max_keys or {}).get(t, 1)), min_size=min_bucket)
                       for t in self._opt}
        self._dims = {t: tables[t].dim for t in self._opt}
        for t, opt in self._opt.items():
            # Also settles the optimizer's row layout outside the jitted step (row_optimizer
            # evaluates its initial state with numpy, which a trace cannot).
            if tables[t].state_dim != opt.state_dim(tables[t].dim):
                raise InputError(f"table {t!r}: TableSpec.state_dim={tables[t].state_dim} but "
                                 f"{opt.name} needs {opt.state_dim(tables[t].dim)} state "
                                 f"columns for dim={tables[t].dim}")
        self._num_keys = {t: tables[t].num_keys for t in self._opt}
        self.min_bucket = min_bucket
        self.tables = {t: jax.numpy.asarray(initial_table(tables[t], t)) for t in self._opt}
        self._compiles = 0
        step, steps = self._make_step(loss_fn)
        self._step = jax.jit(step, donate_argnums=0)
        self._steps = jax.jit(steps, donate_argnums=0)

    @property
    def compiles(self) -> int:
        return self._compiles

    def _make_step(self, loss_fn: Callable) -> Callable:
        opts, dims = self._opt, self._dims

        def update(tables, keys, data):
            # Padding keys are out of range: gathered as zero rows (as the trainer pads) and
            # dropped by the scatter. Real keys are sorted and unique, padding ones too.
            rows = {t: fused.gather(tables[t], keys[t]) for t in tables}
            # Whole-row deltas exactly as SparseTrainer computes them, so the tables see
            # the same float32 additions as the PS rows.
            loss, deltas = loss_and_row_deltas(loss_fn, opts, dims, rows, data)
            return {t: fused.scatter_add(tables[t], keys[t], d) for t, d in deltas.items()}, loss

        def step(tables, keys, data):
            self._compiles += 1  # runs while tracing only
            return update(tables, keys, data)

        def steps(tables, keys, data):
            """K batches per call: ``update`` in a scan (keys [K, B]; a short group's extra
            steps have only padding keys, so they change nothing)."""
            self._compiles += 1
            return jax.lax.scan(lambda tabs, batch: update(tabs, *batch), tables, (keys, data))

        return step, steps

    def _group(self, batches: Iterable):
        """Prepared groups of ``steps_per_call`` batches (the producer thread's iterator):
        (keys [K, B] per table, stacked data, examples of the real batches)."""
        prepared = (_Item(*self._prepare(item)) for item in batches)
        for part in fused.group(prepared, self.steps_per_call):
            pad = self.steps_per_call - len(part)
            keys = {}
            for t in self._opt:
                # Keys come padded to the floor (out-of-range keys); it may have grown within
                # the group. More out-of-range keys, above those, keep rows sorted and unique;
                # dummy steps have only such keys (read as zeros, dropped).
                width = max(len(b.keys[t]) for b in part)
                top = self._num_keys[t] + width
                rows = [np.concatenate([b.keys[t], top + np.arange(width - len(b.keys[t]))])
                        for b in part]
                rows += [top + np.arange(width)] * pad
                keys[t] = np.stack(rows).astype(np.int32)
            data = jax.tree_util.tree_map(lambda *xs: np.stack(xs),
                                          *([b.data for b in part] + [part[-1].data] * pad))
            yield keys, data, tuple(b.num_examples for b in part)

    def _prepare(self, item) -> tuple:
        keys, data, n = read_batch(item, self._opt)
        padded = {}
        for t, k in keys.items():
            size = bucket_size(len(k), min_size=self.min_bucket)
            size = self._floor[t] = max(size, self._floor[t])  # (batch thread only)
            # Distinct out-of-range keys keep the index sorted and unique.
            pad = self._num_keys[t] + np.arange(size - len(k), dtype=np.int64)
            padded[t] = np.concatenate([k.astype(np.int64), pad]).astype(np.int32)
        return padded, data, n

    def train(self, batches: Iterable, *, prefetch: int = 4,
              on_batch: Callable[[int, float], None] | None = None) -> DenseMetrics:
        """One pass over ``batches`` (``jaxps.Batch`` or ``(keys, data)``); waits for the
        last step before returning, so ``seconds`` covers all the work.

        ``on_batch(num_examples, loss)`` after each step (it waits for the step: for
        warm-up, not for timing)."""
        compiles0 = self._compiles
        t0 = time.perf_counter()
        losses, examples = [], 0
        if self.steps_per_call > 1:
            source, prepare = self._group(batches), (lambda g: g)
        else:
            source, prepare = batches, self._prepare
        with Prefetcher(source, prepare, prefetch, "jaxps-dense-batches") as source:
            while (item := source.get()) is not None:
                keys, data, ns = item
                if self.steps_per_call > 1:
                    self.tables, loss = self._steps(self.tables, keys, data)
                else:
                    self.tables, loss = self._step(self.tables, keys, data)
                    ns = (ns,)
                losses.append((loss, len(ns)))  # read at the end: no wait per step
                examples += sum(ns)
                if on_batch is not None:
                    for n, x in zip(ns, np.atleast_1d(np.asarray(loss)).tolist()):
                        on_batch(n, x)
        jax.block_until_ready(self.tables)
        seconds = time.perf_counter() - t0
        losses = [x for loss, n in losses for x in np.atleast_1d(np.asarray(loss))[:n].tolist()]
        return DenseMetrics(losses, examples, len(losses), seconds,
                            self._compiles, self._compiles - compiles0)

    def rows(self, table: str) -> np.ndarray:
        """The whole table as numpy (parameter and state columns)."""
        return np.asarray(self.tables[table])
