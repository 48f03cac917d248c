"""The ``local`` baseline of the benchmark: one process, whole tables in memory, no PS.

The physical limit the parameter server is measured against: the same tables (initial
values from ``TableSpec``, so a 1-rank PS run starts from identical rows), the same loss,
the same row optimizer and the same batches as ``jaxps.SparseTrainer``, but each table is
one jax array and a step is one jitted call that gathers the batch's rows, computes
loss and gradients, applies the row optimizer and scatters the new rows back, with the
tables donated so XLA updates them in place. Batches are prepared (padded to the trainer's
bucket sizes) in a background thread, as the trainer does, and steps are dispatched
asynchronously: the host never waits for a step except to read the losses at the end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxps import Batch, bucket_size, initial_rows, loss_and_row_deltas

_CHUNK = 1 << 16   # keys per chunk when computing initial rows (bounds temporary memory)
_DONE = object()


class LocalMetrics(NamedTuple):
    """What ``LocalTrainer.train`` measured (field meanings as in ``jaxps.EpochMetrics``)."""

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


class LocalTrainer:
    """Train ``loss_fn`` on whole in-memory tables: the PS trainer's semantics, no PS.

    Args:
      tables: table name -> jaxps.TableSpec (rows: parameter then optimizer state).
      loss_fn: pure JAX ``(rows, data) -> scalar`` as for ``jaxps.SparseTrainer``.
      optimizers: table name -> jaxps.RowOptimizer (tables not listed are not trained).
      min_bucket: the smallest padded unique-key count (as the trainer's).
      max_keys: table -> most unique keys of a batch: one padded size, as the trainer's.

    Thread-safety: one thread drives a trainer.
    """

    def __init__(self, tables: Mapping, loss_fn: Callable, optimizers: Mapping, *,
                 min_bucket: int = 64, max_keys: Mapping | None = None):
        self._opt = dict(optimizers)
        # Padded sizes as SparseTrainer's: fixed by max_keys, else only growing.
        self._floor = {t: bucket_size(int((max_keys or {}).get(t, 1)), min_size=min_bucket)
                       for t in self._opt}
        self._dims = {t: tables[t].dim for t in self._opt}
        self._num_keys = {t: tables[t].num_keys for t in self._opt}
        self.min_bucket = min_bucket
        self.tables = {t: jnp.asarray(initial_table(tables[t], t)) for t in self._opt}
        self._compiles = 0
        self._step = jax.jit(self._make_step(loss_fn), donate_argnums=0)

    @property
    def compiles(self) -> int:
        return self._compiles

    def _make_step(self, loss_fn: Callable) -> Callable:
        opts, dims = self._opt, self._dims

        def step(tables, keys, data):
            self._compiles += 1  # runs while tracing only
            # Padding keys are out of range: gathered as zero rows (as the trainer pads) and
            # dropped by the scatter. Real keys are sorted and unique, padding ones too.
            rows = {t: tables[t].at[keys[t]].get(mode="fill", fill_value=0.0,
                                                 indices_are_sorted=True, unique_indices=True)
                    for t in tables}
            # Whole-row deltas exactly as SparseTrainer computes them, so the tables see
            # the same float32 additions as the PS rows.
            loss, deltas = loss_and_row_deltas(loss_fn, opts, dims, rows, data)
            out = {t: tables[t].at[keys[t]].add(delta, mode="drop", indices_are_sorted=True,
                                                unique_indices=True)
                   for t, delta in deltas.items()}
            return out, loss

        return step

    def _prepare(self, item) -> tuple:
        keys, data, n = item if isinstance(item, Batch) else (*item, None)[:3]
        padded = {}
        for t in self._opt:
            k = np.asarray(keys[t], np.int64)
            size = bucket_size(len(k), min_size=self.min_bucket)
            size = self._floor[t] = max(size, self._floor[t])  # (batch thread only)
            # Distinct out-of-range keys keep the index sorted and unique.
            pad = self._num_keys[t] + np.arange(size - len(k), dtype=np.int64)
            padded[t] = np.concatenate([k, pad]).astype(np.int32)
        data = jax.tree_util.tree_map(np.asarray, data)
        if n is None:
            leaves = jax.tree_util.tree_leaves(data)
            n = len(leaves[0]) if leaves and np.ndim(leaves[0]) else 1
        return padded, data, int(n)

    def _produce(self, batches: Iterable, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in batches:
                prepared = self._prepare(item)
                while not stop.is_set():
                    try:
                        out.put(prepared, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(_DONE)
        except BaseException as e:  # re-raised by train()
            out.put(e)

    def train(self, batches: Iterable, *, prefetch: int = 4,
              on_batch: Callable[[int, float], None] | None = None) -> LocalMetrics:
        """One pass over ``batches`` (``jaxps.Batch`` or ``(keys, data)``); waits for the
        last step before returning, so ``seconds`` covers all the work.

        ``on_batch(num_examples, loss)`` after each step (it waits for the step: for
        warm-up, not for timing)."""
        compiles0 = self._compiles
        t0 = time.perf_counter()
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(batches, q, stop),
                                    name="bench-local-batches", daemon=True)
        producer.start()
        losses, examples = [], 0
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                keys, data, n = item
                self.tables, loss = self._step(self.tables, keys, data)
                losses.append(loss)
                examples += n
                if on_batch is not None:
                    on_batch(n, float(loss))
        finally:
            stop.set()
            producer.join()
        jax.block_until_ready(self.tables)
        seconds = time.perf_counter() - t0
        return LocalMetrics([float(x) for x in losses], examples, len(losses), seconds,
                            self._compiles, self._compiles - compiles0)

    def rows(self, table: str) -> np.ndarray:
        """The whole table as numpy (parameter and state columns)."""
        return np.asarray(self.tables[table])


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(
        prog="python -m train.bench_local",
        description="A library module, not a program: LocalTrainer, the no-PS baseline of "
                    "`python -m train.bench` (technique `local`; docs/bench.md).").parse_args()
