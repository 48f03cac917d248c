"""AdaPS: the adaptive technique -- its timing, its owner-side decision, its bookkeeping.

From intents alone, per key and over time: relocate a key to the one rank that intends
to use it, replicate it to every rank when several do, drop a replica when its rank's
intent expires (its updates go to the owner first), and leave keys without intent where
they are. When to act is learned (``ActionTimer``). Everything here is written against
``PolicyView``: the engine moves and copies, this file decides.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .errors import InputError
from .policy import Technique
from .techniques import IntentBook, merge_keys

SHARED_MEMORY = 2  # clocks an owner remembers that a key was shared
SOON = 16  # clocks ahead within which an owner's signaled intent keeps its key here


class ActionTimer:
    """When to act on an intent (AdaPS): early enough that the key is here when the clock
    arrives, not needlessly early.

    Estimates, with exponential smoothing (alpha 0.1), the seconds an action takes
    (intent sent -> key local) and the seconds per clock, and acts once an intent's
    start is within the 0.9999-quantile of Poisson(2 x clocks-per-action) clocks.
    """

    def __init__(self, alpha: float = 0.1, quantile: float = 0.9999):
        self.alpha, self.quantile = alpha, quantile
        self.action_s: float | None = None
        self.clock_s: float | None = None
        self._last_tick: float | None = None
        self._watch: list = []
        self._horizon: int | None = None

    def tick(self) -> None:
        self._horizon = None
        now = time.perf_counter()
        if self._last_tick is not None:
            self.clock_s = self._smooth(self.clock_s, now - self._last_tick)
        self._last_tick = now
        still = []
        for h in self._watch:
            if h.done():
                self.action_s = self._smooth(self.action_s, h.t_done - h.t_start)
            else:
                still.append(h)
        self._watch = still

    def watch(self, handle) -> None:
        self._watch.append(handle)

    def horizon(self) -> int:
        """Clocks ahead at which to act (>= 1); recomputed once per clock tick."""
        if self._horizon is None:
            if not self.action_s or not self.clock_s:
                self._horizon = 1
            else:
                lam = min(2.0 * self.action_s / self.clock_s, 500.0)
                self._horizon = max(1, _poisson_quantile(lam, self.quantile))
        return self._horizon

    def _smooth(self, old, new):
        return new if old is None else (1 - self.alpha) * old + self.alpha * new


def _poisson_quantile(lam: float, q: float) -> int:
    k, p = 0, math.exp(-lam)
    c = p
    while c < q:
        k += 1
        p *= lam / k
        c += p
    return k


class AdaptiveState:
    """Per-server state of Adaptive.

    Fields:
      book: intents not acted upon yet.
      timer: the ActionTimer.
      intent_end: table -> int32 [num_keys]: end clock of the latest of this rank's
        intents per key that came due (an intent far ahead counts once it is due).
      signaled_start, signaled_end: table -> int32 [num_keys]: the clocks of the latest
        intent this rank signaled per key, due or not (an owner that will use a key
        within SOON clocks does not hand it over).
      signaled_through: the latest start clock of any intent this rank signaled (-1:
        nothing signaled yet).
      shared_at: table -> int32 [num_keys]: for keys this rank owns, its clock when it
        last gave out a replica of the key (recently shared keys stay put).
      retry: requests were held back for writes in flight (retried on an ack).
    """

    def __init__(self, tables: dict):
        self.book = IntentBook()
        self.timer = ActionTimer()
        self.intent_end = {t: np.zeros(s.num_keys, np.int32) for t, s in tables.items()}
        self.signaled_start = {t: np.zeros(s.num_keys, np.int32) for t, s in tables.items()}
        self.signaled_end = {t: np.zeros(s.num_keys, np.int32) for t, s in tables.items()}
        self.signaled_through = -1
        self.shared_at = {t: np.full(s.num_keys, -(1 << 30), np.int32)
                          for t, s in tables.items()}
        self.retry = False


class Adaptive(Technique):
    """AdaPS: relocate a key to the one rank that intends it, replicate it when several
    do, drop replicas whose intents expired; when to act is learned.

    Args:
      grace: clocks a replica is kept after its rank's last intent for it ended. A key used
        again within them keeps its replica instead of being dropped and fetched again.
      drop_every: expired replicas are dropped every this many clocks, in one DROP message
        per owner. Measured on kge-zipf-small, 2 ranks (``train.bench``): grace 1 / every
        clock sent 6.6 envelopes per step and rank, grace 4 / every 4 clocks 4.4, with 25%
        less PS CPU per step and the same loss; grace 8 kept more replicas to sync and was
        no faster.
      act_every: intents are acted upon every this many clocks (the PS's sync rounds and
        OWNER updates leave at the same clocks, so each owner gets one envelope per
        ``act_every`` clocks); an intent the next acting clock would be too late for is
        acted upon at once. Needs a lookahead of about ``act_every`` + the learned
        horizon (the trainer's default 8); with less it acts at every intent.
    """

    name = "adaptive"
    relocates = True
    replicates = True

    def __init__(self, grace: int = 4, drop_every: int = 4, act_every: int = 4):
        for name, value in (("grace", grace), ("drop_every", drop_every),
                            ("act_every", act_every)):
            low = 0 if name == "grace" else 1
            if not isinstance(value, int) or value < low:
                raise InputError(f"Adaptive: {name} must be an int >= {low}, got {value!r}")
        self.grace, self.drop_every, self.act_every = grace, drop_every, act_every

    def setup(self, view):
        for table in view.tables:
            view.enable_replicas(table)
        return AdaptiveState(view.tables)

    def localize(self, view, state, table, keys):
        return view.localize(table, keys)

    def on_ack(self, view, state):
        if state.retry:  # requests held back for writes in flight: maybe free now
            state.retry = False
            self._act(view, state, view.clock, self._next_act(view.clock) - view.clock)

    def on_intent(self, view, state, table, keys, start, end):
        state.book.add(table, keys, start, end)
        state.signaled_start[table][keys] = start
        state.signaled_end[table][keys] = end
        state.signaled_through = max(state.signaled_through, start)
        # Only what the next acting clock would be too late for: the rest goes out then,
        # with everything else of that clock, in one envelope per owner.
        if start <= self._next_act(view.clock):
            self._act(view, state, view.clock, self._next_act(view.clock) - view.clock)

    def on_clock(self, view, state, clock):
        state.timer.tick()
        if clock % self.drop_every == 0:
            for table in view.tables:
                keys = view.replica_keys(table)
                # Grace: a key used again soon keeps its replica instead of being dropped
                # and fetched again (its DROP in flight would delay the fetch).
                expired = keys[state.intent_end[table][keys] + self.grace <= clock]
                if len(expired):
                    view.drop_replicas(table, expired)
        if clock % self.act_every == 0:
            # Until the next acting clock nothing more is requested: act now on every intent
            # that starts before the horizon would pass then.
            self._act(view, state, clock, state.timer.horizon() + self.act_every - 1)

    def decide_at_owner(self, view, state, table, keys, origin):
        # Shared: the owner uses the key now or has signaled that it will within SOON
        # clocks (a key handed over now would be asked back before the move paid off),
        # replicas exist, or another rank had it replicated within SHARED_MEMORY clocks
        # (a hot key stays put and is copied, instead of moving to each rank that asks
        # first in a quiet moment).
        # An owner that has signaled nothing yet (it started later: its first batches
        # are still being prepared) copies rather than hands over. Without these
        # two rules the rank that started first took over every key of its first calls,
        # and the imbalance lasted (kge-zipf-small, 2 ranks, 32 batches per call: one rank
        # owned 28,700 of 29,534 entities, the other synced 14,000 replicas alone).
        clock, shared_at = view.clock, state.shared_at[table]
        if state.signaled_through < 0:
            shared_at[keys] = clock
            return np.ones(len(keys), bool)
        shared = ((state.intent_end[table][keys] > clock)
                  | ((state.signaled_end[table][keys] > clock)
                     & (state.signaled_start[table][keys] <= clock + SOON))
                  | (view.holders(table, keys) > 0)
                  | (shared_at[keys] + SHARED_MEMORY >= clock))
        shared_at[keys[shared]] = clock
        return shared

    def _next_act(self, clock: int) -> int:
        """The next clock after ``clock`` at which ``on_clock`` acts."""
        return (clock // self.act_every + 1) * self.act_every

    def _act(self, view, state, clock, horizon):
        due = state.book.pop_due(clock, horizon)
        for table, keys, end in due:
            # Only intents due now count as this rank's use of a key: for the owner's
            # decisions (replicate rather than hand over) and for keeping replicas. An
            # intent far ahead acts when it is due.
            ends = state.intent_end[table]
            ends[keys] = np.maximum(ends[keys], end)
        for table, keys in merge_keys(due).items():
            keys = keys[view.absent(table, keys)]
            keys = keys[state.intent_end[table][keys] > clock]
            busy = view.writes_in_flight(table, keys)
            if busy.any():  # a replica fetched now could miss them: retry after an ack
                state.book.add(table, keys[busy], clock,
                               int(state.intent_end[table][keys[busy]].max()))
                state.retry = True
                keys = keys[~busy]
            if len(keys):
                state.timer.watch(view.request(table, keys))
