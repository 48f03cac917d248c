"""SparseTrainer: the JAX glue on top of the PS (intents, pull, one jitted step, push).

Per batch t (clock c):
  1. ``ps.intent(table, keys of batch t + L, c + L)`` for the batch ``lookahead`` L ahead,
     before batch t runs, so the PS can move those rows here while batch t computes;
  2. pull the rows of batch t (whole rows: parameter + optimizer state);
  3. one jitted step: loss, gradients w.r.t. the parameter columns, the row optimizer's
     update, returned as whole-row deltas (those of padding rows are never pushed);
  4. ``push_async`` the deltas (the PS's read-your-writes fence orders them before the next
     pull of the same keys), then ``ps.advance_clock()``.
A background thread (``pipeline.Prefetcher``) reads the batch source, checks the keys and
pads them to bucket sizes, ahead of the step (the jitted step releases the GIL). Unique-key
counts are padded to a few bucket sizes so the step stops compiling after warm-up;
``compiles`` counts traces. With ``steps_per_call`` K > 1 each of 1-4 is done once per K
batches (a window: the union of their keys, one ``lax.scan`` of the step; ``fused.py``),
and the clock ticks once per window.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import devices, fused
from .errors import InputError
from .pipeline import Batch, Prefetcher, bucket_size, index_batch, read_batch
from .row_optim import RowOptimizer
from .stats import delta as stats_delta

__all__ = ["Batch", "EpochMetrics", "SparseTrainer", "bucket_size", "index_batch",
           "loss_and_row_deltas"]


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    """What ``SparseTrainer.train_epoch`` measured over one pass of a batch source.

    Attributes:
      loss: mean batch loss, weighted by examples.
      examples, batches: processed on this rank.
      seconds: wall time of the epoch on this rank.
      examples_per_s: examples / seconds (this rank).
      compiles: traces of the step so far (cumulative); new_compiles: during this epoch.
      ps: this epoch's PS counters of this rank (pulls/pushes local and remote, bytes,
        relocations, wait_seconds) and ``local_fraction`` = local pulls / all pulls.
    """

    loss: float
    examples: int
    batches: int
    seconds: float
    examples_per_s: float
    compiles: int
    new_compiles: int
    ps: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Tally:
    """One epoch's bookkeeping, the same for both loops of ``train_epoch``: the losses
    weighted by examples, the counts, and the PS counters and compiles at its start."""

    def __init__(self, trainer: "SparseTrainer", on_batch):
        self._trainer, self._on_batch = trainer, on_batch
        self._before, self._compiles0 = trainer.ps.stats(), trainer.compiles
        self._t0 = time.perf_counter()
        self.losses, self.weights, self.examples, self.batches = [], [], 0, 0

    def add(self, num_examples: int, loss) -> None:
        # The step has finished (its deltas were pushed): reading the loss is a copy of one
        # float. (A jnp.stack of the epoch's losses at the end compiled a new concatenation
        # for every epoch length: ~0.5 ms per batch.)
        loss = float(loss)
        self.losses.append(loss)
        self.weights.append(num_examples)
        self.examples += num_examples
        self.batches += 1
        if self._on_batch is not None:
            self._on_batch(num_examples, loss)

    def metrics(self) -> EpochMetrics:
        seconds = time.perf_counter() - self._t0
        loss = (float(np.dot(self.losses, self.weights) / sum(self.weights)) if self.losses
                else float("nan"))
        compiles = self._trainer.compiles
        return EpochMetrics(loss, self.examples, self.batches, seconds,
                            self.examples / max(seconds, 1e-9), compiles,
                            compiles - self._compiles0,
                            stats_delta(self._before, self._trainer.ps.stats()))


class _Prepared(NamedTuple):
    keys: dict          # table -> int64 [U_t]
    sizes: dict         # table -> padded size B_t
    data: Any           # pytree of numpy arrays
    num_examples: int


class SparseTrainer:
    """Train a pure JAX loss over PS rows: intents ahead, pull, one jitted step, push.

    Args:
      ps: the ParameterServer holding the tables.
      loss_fn: pure JAX ``(rows, data) -> scalar`` where ``rows[table]`` is float32
        [B_t, dim_t] (the parameter columns of the batch's unique keys, in key order,
        followed by zero padding rows up to the bucket size B_t) and ``data`` the batch's
        data pytree (it indexes rows by position, so padding rows are never read).
      optimizers: table -> RowOptimizer; the table's TableSpec must have
        ``state_dim == optimizer.state_dim(dim)``. Tables not listed are not trained.
      lookahead: L >= 0: before batch t runs, signal intent for batch t + L (0: no intents).
        The default 8 lets the adaptive technique act on intents every 4 clocks (one
        envelope per owner, with the sync round) and still have its rows here in time:
        kge-zipf-small, 2 ranks: 85% of pulls local with 1, 98.8% with 2 (acting every
        clock, 3.8 envelopes per step), 99.8% with 8 (1.1 envelopes per step).
      prefetch: batches prepared ahead by the background thread (>= lookahead + 1).
      min_bucket: the smallest padded unique-key count.
      max_keys: table -> the most unique keys a batch can have (e.g. KGE entities:
        2 x batch size + negatives). Given, every batch of the table is padded to that one
        bucket size, so the step compiles once (``compile``) and never mid-epoch. Without
        it the padded size only grows (the largest bucket met so far), so a run compiles
        at most a few times, early.
      steps_per_call: K >= 1 consecutive batches per jitted call (``jaxps/_src/fused.py``):
        one pull of the union of their keys, a ``lax.scan`` of the step over them (each
        batch reads the rows as the batches before it in the call left them, as a serial
        run would), one push of the summed deltas and one tick of the PS clock. The host's
        work per call (dispatch, pull, push, the PS's per-clock work) is paid once per K
        batches; other ranks' updates arrive at call boundaries. ``lookahead`` then counts
        calls. Batches whose data shapes differ from the call's start a new one (a short
        call is filled with steps that change nothing). 1: one batch per call. Memory per
        call and table: the union's slice and its deltas, each [S, width] float32, with
        S = min(K x max_keys, num_keys) padded (fixed, so that ``compile`` stays the only
        compilation) where ``max_keys`` is given, else the union's bucket.
      device: where the jitted step runs (the PS's rows stay on the host and travel to
        it and back every step): None picks, where JAX's default backend is a GPU (the
        ``cuda`` extra), this rank's GPU, number ``ps.host.local_rank % count``, and the
        CPU otherwise; a platform name ("gpu", "cpu") or a ``jax.Device`` chooses.
        ``self.device`` is the choice (None: JAX's default, the CPU).

    With the ``lockstep`` technique (``jaxps.Lockstep``) on several ranks, ``train_epoch``
    is collective: rows and deltas move in per-step collectives made by this thread
    (``jaxps/_src/lockstep.py``); ``lookahead`` is not used (nothing moves ahead).

    Thread-safety: one thread drives a trainer; the trainer runs one background thread
    per ``train_epoch`` for the batch source (which must therefore be safe to iterate in
    another thread).
    """

    def __init__(self, ps, loss_fn: Callable, optimizers: Mapping[str, RowOptimizer], *,
                 lookahead: int = 8, prefetch: int = 4, min_bucket: int = 64,
                 max_keys: Mapping[str, int] | None = None, steps_per_call: int = 1,
                 device=None):
        if not optimizers:
            raise InputError("SparseTrainer: optimizers must map at least one table to a "
                             "RowOptimizer, e.g. {'entity': jaxps.row_adagrad(0.1)}")
        if not isinstance(lookahead, int) or lookahead < 0:
            raise InputError(f"SparseTrainer: lookahead must be an int >= 0, got {lookahead!r}")
        if not isinstance(steps_per_call, int) or steps_per_call < 1:
            raise InputError(f"SparseTrainer: steps_per_call must be an int >= 1, got "
                             f"{steps_per_call!r}")
        self.ps = ps
        self.lookahead = lookahead
        self.steps_per_call = steps_per_call
        self.prefetch = max(prefetch, lookahead + 1)
        self.min_bucket = min_bucket
        self._opt = dict(optimizers)
        self._dims, self._widths = {}, {}
        for table, opt in self._opt.items():
            spec = ps.tables.get(table)
            if spec is None:
                raise InputError(f"SparseTrainer: no table {table!r} in the ParameterServer")
            if spec.state_dim != opt.state_dim(spec.dim):
                raise InputError(
                    f"table {table!r}: TableSpec.state_dim={spec.state_dim} but {opt.name} "
                    f"needs {opt.state_dim(spec.dim)} state columns for dim={spec.dim}; build "
                    f"it as TableSpec(..., state_dim=opt.state_dim(dim), "
                    f"state_init=opt.state_init)")
            self._dims[table] = spec.dim
            self._widths[table] = spec.width
        self._num_keys = {t: ps.tables[t].num_keys for t in self._opt}
        # Padded size per table: never shrinks, so shapes (and compiles) settle early.
        self._floor = {t: min_bucket for t in self._opt}
        for table, n in (max_keys or {}).items():
            if table not in self._opt:
                raise InputError(f"SparseTrainer: max_keys names {table!r}, which has no "
                                 f"optimizer; trained tables are {sorted(self._opt)}")
            if not isinstance(n, (int, np.integer)) or n < 1:
                raise InputError(f"SparseTrainer: max_keys[{table!r}] must be an int >= 1, "
                                 f"got {n!r}")
            self._floor[table] = bucket_size(int(n), min_size=min_bucket)
        self._fixed = set(max_keys or ())
        # Slice sizes of a call's key union: with max_keys the largest possible union, so
        # that compile() is the only compilation; else they grow as unions do.
        self._slice_floor = {
            t: (bucket_size(min(steps_per_call * self._floor[t], ps.tables[t].num_keys),
                            min_size=min_bucket) if t in self._fixed else min_bucket)
            for t in self._opt}
        self._check_finite = getattr(ps, "_check_finite", True)
        self._compiles = 0
        self._step = jax.jit(self._make_step(loss_fn))
        # The window's delta sums live in one buffer per table, donated to every call and
        # returned by it (in place): a fresh [S, width] result per call cost XLA more than
        # the rest of the bookkeeping (kge-zipf-small, K = 32, S = 32,768 rows of 1 KB: the
        # scan's gathers and scatters 23 ms per call with a fresh buffer, 8.4 ms reused).
        self._fused = jax.jit(self._make_fused(loss_fn), donate_argnums=0)
        self._acc: dict = {}
        host = getattr(ps, "host", None)
        self.device = devices.step_device(0 if host is None else host.local_rank, device)
        # Lockstep (jaxps._src.lockstep): rows move in this thread's collectives.
        self._exchange = getattr(ps, "_lockstep", None)

    @property
    def compiles(self) -> int:
        """How many times the step was traced (once per new combination of shapes)."""
        return self._compiles

    def _make_step(self, loss_fn: Callable) -> Callable:
        opts, dims = self._opt, self._dims

        def step(rows, counts, data, lr_scale):
            self._compiles += 1  # runs while tracing only: counts compilations
            loss, deltas = loss_and_row_deltas(loss_fn, opts, dims, rows, data,
                                               lr_scale=lr_scale)
            valid = {t: jnp.arange(d.shape[0]) < counts[t] for t, d in deltas.items()}
            return loss, deltas, _finite(loss, deltas, valid)

        return step

    def _make_fused(self, loss_fn: Callable) -> Callable:
        """The step over a window: slices of the union's rows -> (losses [K], whole-row
        deltas of every slice row summed over the window, all real steps finite).

        The scan carries the window's deltas, not updated rows: a batch reads its rows as
        slice + deltas so far (what a serial run would read), and the result is the push
        itself. The slice stays a read-only input (used in place, not copied into the
        loop), and no ``final - initial`` pass over it is needed."""
        opts, dims = self._opt, self._dims

        def step(acc, slices, positions, data, lr, mask):
            self._compiles += 1  # runs while tracing only: counts compilations

            def body(acc, batch):
                pos, data, rate = batch
                rows = {t: fused.gather(slices[t], pos[t]) + fused.gather(acc[t], pos[t])
                        for t in slices}
                loss, deltas = loss_and_row_deltas(loss_fn, opts, dims, rows, data,
                                                   lr_scale=rate)
                acc = {t: fused.scatter_add(acc[t], pos[t], d) for t, d in deltas.items()}
                return acc, loss

            # Zeroed in place (``acc`` is donated; ``zeros_like`` would allocate anew).
            zeros = {t: a.at[:].set(0.0) for t, a in acc.items()}
            deltas, losses = jax.lax.scan(body, zeros, (positions, data, lr))
            # Checked once on the sum, not on every step's deltas (that cost ~5% of the
            # call): a NaN or Inf delta of a real row stays non-finite in the sum (NaN + x
            # is NaN, Inf + x is Inf or NaN), padding rows' deltas were dropped by the
            # scatter, and a sum that overflows would be pushed as Inf, so it fails too.
            # Dummy steps (mask 0) may compute anything: their losses are not checked.
            finite = (jnp.isfinite(losses) | (mask == 0)).all()
            for d in deltas.values():
                finite &= jnp.isfinite(d).all()
            return losses, deltas, finite

        return step

    # ----- the background producer --------------------------------------------------------
    def _prepare(self, item) -> _Prepared:
        keys, data, n = read_batch(item, self._opt)
        prepared = {}
        for table, k in keys.items():
            k = self.ps._checked_keys(table, k)  # once here, not at every PS call
            if table in self._fixed and len(k) > self._floor[table]:
                raise InputError(f"batch has {len(k)} keys of table {table!r}, more than "
                                 f"SparseTrainer's max_keys bucket {self._floor[table]}; "
                                 f"raise max_keys[{table!r}]")
            prepared[table] = k
        sizes = {t: bucket_size(len(k), min_size=self.min_bucket) for t, k in prepared.items()}
        return _Prepared(prepared, sizes, data, n)

    def _windows(self, batches: Iterable):
        """The batches as prepared windows of ``steps_per_call`` (the producer thread's
        iterator; it alone grows the floors while an epoch runs)."""
        prepared = (self._prepare(item) for item in batches)
        for part in fused.group(prepared, self.steps_per_call):
            for b in part:
                for t, n in b.sizes.items():
                    self._floor[t] = max(self._floor[t], n)
            yield fused.window(part, self.steps_per_call, dict(self._floor), self._slice_floor,
                               self._num_keys)

    def _source(self, batches: Iterable) -> Prefetcher:
        """The prepared batches (one per call) from a background thread."""
        if self.steps_per_call == 1:
            return Prefetcher(batches, self._prepare, self.prefetch, "jaxps-batches")
        return Prefetcher(self._windows(batches), lambda w: w, self.prefetch, "jaxps-batches")

    def _padded_sizes(self, b: _Prepared) -> dict:
        """Bucket sizes for ``b`` on the training thread: at least the floor, which grows."""
        for t, n in b.sizes.items():
            if n > self._floor[t]:
                self._floor[t] = n
        return dict(self._floor)

    def compile(self, example) -> int:
        """Compile the step for ``example`` (a batch as the source yields it) now, at the
        padded sizes later batches will use; returns the number of new compilations.

        With ``max_keys`` for every trained table this is the only compilation of a run:
        call it before the first epoch so that no epoch stalls mid-way (and timings never
        include one). Runs the step once on zero rows, which changes nothing in the PS.
        """
        before = self._compiles
        if self.steps_per_call > 1:
            w = next(self._windows([example]))
            rows = {t: np.zeros((w.sizes[t], self._widths[t]), np.float32) for t in w.keys}
            with devices.on(self.device):
                out = self._fused(self._delta_buffers(w), rows, w.positions, w.data,
                                  np.zeros(self.steps_per_call, np.float32), w.lr_mask)
            jax.block_until_ready(out)
            self._acc = dict(out[1])
            return self._compiles - before
        b = self._prepare(example)
        sizes = self._padded_sizes(b)
        rows = {t: np.zeros((sizes[t], self._widths[t]), np.float32) for t in b.keys}
        counts = {t: np.int32(0) for t in b.keys}
        with devices.on(self.device):
            out = self._step(rows, counts, b.data, np.float32(1.0))
        jax.block_until_ready(out)
        return self._compiles - before

    # ----- the training loop --------------------------------------------------------------
    def train_epoch(self, batches: Iterable, *,
                    on_batch: Callable[[int, float], None] | None = None,
                    lr_scale: float | Callable[[int], float] = 1.0) -> EpochMetrics:
        """One pass over ``batches`` (an iterable of ``(keys, data)`` or ``Batch``).

        Args:
          batches: see ``Batch``; iterated in a background thread.
          on_batch: called after each step with (num_examples, loss) (e.g. a progress bar).
          lr_scale: factor on every parameter update (not on the optimizer state), or
            ``batch index in this epoch -> factor``: a learning-rate schedule for optimizers
            whose update is linear in their learning rate (optax's adagrad, adam, sgd end in
            ``scale_by_learning_rate``). A step argument, so a new value never recompiles.

        Returns:
          EpochMetrics. Collective with the lockstep technique (every rank calls it, as
          many times; the batch counts may differ). Afterwards every push of this rank has
          completed
          (``ps.wait_all``); call ``ps.wait_sync()`` (collective) before reading other
          ranks' updates.
        """
        if self._exchange is not None:
            return self._epoch_in_lockstep(batches, on_batch, lr_scale)
        ps = self.ps
        tally = _Tally(self, on_batch)
        window: deque[_Prepared] = deque()
        exhausted = False

        def next_batch(ahead: int) -> None:
            """Take one prepared batch; signal its intent for clock + ahead."""
            nonlocal exhausted
            item = source.get()
            if item is None:
                exhausted = True
                return
            if self.lookahead:
                for table, keys in item.keys.items():
                    if len(keys):
                        ps._intent_unsent(table, keys, ps.clock + ahead, checked=True)
                ps._send_queued()  # every table's intents in one envelope per owner
            window.append(item)

        with self._source(batches) as source:
            while not exhausted and len(window) < self.lookahead:
                next_batch(len(window))
            while True:
                if not exhausted:
                    next_batch(self.lookahead)  # batch t + L, before batch t runs
                if not window:
                    break
                for n, loss in self._run(window.popleft(), lr_scale, tally.batches):
                    tally.add(n, loss)
        ps.wait_all()
        return tally.metrics()

    def _epoch_in_lockstep(self, batches: Iterable, on_batch, lr_scale) -> EpochMetrics:
        """``train_epoch`` with the lockstep technique: collective (every rank runs it).

        Per batch: the rows come from their owners in ``StepExchange.pull``, the step runs,
        the deltas go back in ``StepExchange.push``. No intents (nothing moves). A rank
        whose batches ran out takes part in the others' remaining steps with no keys, so
        every rank makes the same number of exchanges (uneven shards do not hang).
        """
        ps, exchange = self.ps, self._exchange
        names = sorted(self._opt)
        none = {t: np.empty(0, np.int64) for t in names}
        tally = _Tally(self, on_batch)
        with self._source(batches) as source:
            b = source.get()
            while True:
                if b is None:
                    if not exchange.pull(names, none, {}, done=True):
                        break
                    exchange.push({})
                    continue
                keys = {t: b.keys.get(t, none[t]) for t in names}
                rows = self._rows(b)
                exchange.pull(names, keys, rows, done=False)
                # A NaN raises here while the other ranks wait in the push: the error ends
                # the job (run_main or the PS's abort_on_error), as any error must there.
                results, deltas = self._compute(b, rows, lr_scale, tally.batches)
                exchange.push(deltas)
                ps.advance_clock()
                for n, loss in results:
                    tally.add(n, loss)
                b = source.get()
        return tally.metrics()

    def _padded(self, table: str, size: int, n: int) -> np.ndarray:
        """The step's input rows of ``table``: [size, width], aligned; rows from n on zero
        (the first n are filled by the pull)."""
        padded = _aligned_empty((size, self._widths[table]))
        padded[n:] = 0.0
        return padded

    def _rows(self, b) -> dict:
        """The call's input rows per table, for the pull to fill: a batch's padded rows
        (zero padding), or a window's slices (rows past the union are never read)."""
        if isinstance(b, fused.Window):
            return {t: _aligned_empty((b.sizes[t], self._widths[t])) for t in b.keys}
        sizes = self._padded_sizes(b)
        return {t: self._padded(t, sizes[t], len(k)) for t, k in b.keys.items()}

    def _delta_buffers(self, w: fused.Window) -> dict:
        """Per table the [S, width] buffer the call of window ``w`` sums its deltas in:
        the last call's result (donated: overwritten in place), or new where the slice
        size changed. The push reads that result through numpy views, which are gone by
        the next call (if one were not, JAX would copy instead: never a wrong value)."""
        out = {}
        for t in w.keys:
            shape = (w.sizes[t], self._widths[t])
            buf = self._acc.get(t)
            out[t] = buf if buf is not None and buf.shape == shape else jnp.zeros(shape)
        self._acc = {}  # donated below: never passed twice
        return out

    def _compute(self, b, rows: dict, lr_scale, first: int):
        """The jitted call on pulled ``rows`` of batch or window ``b`` whose first batch is
        the epoch's number ``first``: ``([(examples, loss) per batch], {table: deltas of
        b.keys[t], numpy})``. InputError on NaN/Inf, before anything is pushed."""
        rate = (lambda i: float(lr_scale(first + i))) if callable(lr_scale) else (
            lambda i: float(lr_scale))
        if isinstance(b, fused.Window):
            n = len(b.examples)
            lr = np.zeros(self.steps_per_call, np.float32)
            lr[:n] = [rate(i) for i in range(n)]
            with devices.on(self.device):
                losses, deltas, finite = self._fused(self._delta_buffers(b), rows,
                                                     b.positions, b.data, lr, b.lr_mask)
            self._acc = dict(deltas)  # the next call's buffers (once the push is done)
            what, them = f"one of batches {first}-{first + n - 1} of this epoch", "these batches"
            results = list(zip(b.examples, np.asarray(losses)[:n].tolist()))
        else:
            counts = {t: np.int32(len(k)) for t, k in b.keys.items()}
            with devices.on(self.device):
                loss, deltas, finite = self._step(rows, counts, b.data, np.float32(rate(0)))
            what, them = f"batch {first} of this epoch", "this batch"
            results = [(b.num_examples, loss)]
        if self._check_finite and not bool(finite):
            raise InputError(
                f"the step produced NaN or Inf (loss {[float(x) for _, x in results]}) at "
                f"clock {self.ps.clock}, {what}; nothing of {them} was pushed. Lower the "
                f"learning rate or check the loss for log(0) / division by zero")
        return results, {t: np.asarray(deltas[t])[:len(k)] for t, k in b.keys.items()}

    def _run(self, b, lr_scale, first: int) -> list:
        """Pull, step, push, tick for one batch or window; returns [(examples, loss)]."""
        ps = self.ps
        if isinstance(b, fused.Window) and getattr(ps, "size", 1) > 1:
            # Owned keys first: the pull and the push then take the owned rows and the
            # replicas as two slices, not as two copies (K = 32 on kge-zipf-small, 2 ranks:
            # ~8,700 rows of each per call).
            for t, k in b.keys.items():
                perm = ps._local_first(t, k)
                if perm is not None:
                    b = fused.reorder(b, t, perm)
        rows = self._rows(b)
        # Rows land directly in the step's aligned input (no second copy).
        handles = [ps._pull_into(t, k, rows[t]) for t, k in b.keys.items()]
        for h in handles:
            ps.wait(h)
        results, deltas = self._compute(b, rows, lr_scale, first)
        for t, k in b.keys.items():
            if len(k):
                ps._push_checked(t, k, deltas[t])
        ps.advance_clock()
        return results


def loss_and_row_deltas(loss_fn: Callable, optimizers: Mapping[str, RowOptimizer],
                        dims: Mapping[str, int], rows: Mapping[str, jax.Array], data, *,
                        lr_scale=1.0):
    """The step's math (traceable): loss, and per table the whole-row delta (parameter
    update | optimizer state change) of every row of ``rows[t]`` [B_t, dim + state_dim].
    Shared with the no-PS baseline of the benchmark, so both apply the same additions.
    ``lr_scale`` multiplies the parameter updates (see ``SparseTrainer.train_epoch``)."""
    params = {t: r[:, :dims[t]] for t, r in rows.items()}
    loss, grads = jax.value_and_grad(loss_fn)(params, data)
    deltas = {}
    for t, r in rows.items():
        opt, d = optimizers[t], dims[t]
        updates, new_state = opt.update(grads[t], opt.unpack(r[:, d:], d), params[t])
        # A stateless optimizer (optax.sgd) has no state columns; its pack has no rows.
        packed = opt.pack(new_state) if r.shape[1] > d else r[:, d:]
        delta_state = packed - r[:, d:]
        deltas[t] = jnp.concatenate([(updates * lr_scale).astype(jnp.float32),
                                     delta_state.reshape(r.shape[0], -1)], axis=1)
    return loss, deltas


def _finite(loss, deltas: Mapping, valid: Mapping):
    """Traceable: the loss and every valid row's delta (``valid[t]`` bool [B_t]) finite.

    Checked inside the step instead of a pass over the deltas on the host at every push
    (the PS's check_finite); padding rows are never pushed, so they are not checked."""
    finite = jnp.isfinite(loss)
    for t, delta in deltas.items():
        finite &= (jnp.isfinite(delta) | ~valid[t][:, None]).all()
    return finite


def _aligned_empty(shape: tuple[int, int]) -> np.ndarray:
    """A fresh float32 array whose data is 64-byte aligned.

    JAX on the CPU uses such a numpy argument in place (zero-copy) instead of copying it
    into a device buffer: for the rows of a batch this saves a copy of several MB per
    step. Fresh per batch, because the step may still read it after ``_step`` returns.
    """
    n = shape[0] * shape[1] * 4
    raw = np.empty(n + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    return raw[offset:offset + n].view(np.float32).reshape(shape)
