"""One simulated clock (or intent window) of each technique, written into the ledger
(model: train/whatif/__init__.py)."""

from __future__ import annotations

import numpy as np

from train.whatif.ledger import BACKGROUND, DEMAND, HEADER_BYTES, KEY_BYTES, Ledger

def _slot(t):
    """Where an action needed at clock t runs: on demand at clock 0, else ahead during t - 1."""
    t = np.asarray(t)
    return np.where(t == 0, DEMAND, BACKGROUND), np.maximum(t - 1, 0)


def _remote(led: Ledger, t, r, o, row: int) -> None:
    """Pull (on demand) and push (background) of keys owned by o, from rank r."""
    led.send(DEMAND, t, r, o, KEY_BYTES)
    led.send(DEMAND, t, o, r, row + KEY_BYTES)
    led.wait(DEMAND, t, r[r != o], 2)
    led.send(BACKGROUND, t, r, o, row + KEY_BYTES)
    led.send(BACKGROUND, t, o, r, KEY_BYTES)
    led.wait(BACKGROUND, t, r[r != o], 2)


def _relocate(led: Ledger, t, r, k, owner: np.ndarray, row: int) -> None:
    """Move keys k to ranks r for clock t (3 messages: r -> home -> old owner -> r)."""
    if len(k) == 0:
        return
    b, ts = _slot(t)
    home, old = k % led.n, owner[k]
    led.send(b, ts, r, home, KEY_BYTES)
    led.send(b, ts, home, old, KEY_BYTES)
    led.send(b, ts, old, r, row + KEY_BYTES)
    led.wait(b, ts, r, 3)
    led.relocations += np.bincount(np.broadcast_to(ts, k.shape).ravel(), None, led.clocks)
    owner[k] = r


def _classic(led, t, r, k, row, state):
    o = k % led.n
    led.access(t, o == r)
    far = o != r
    _remote(led, t, r[far], o[far], row)


def _sync_held(led, t, per_home: np.ndarray, row: int) -> None:
    """Every rank syncs every replica it holds with the key's home: delta up, fresh row back.

    per_home[d]: replicated keys homed on rank d (each rank holds all of them but its own).
    """
    n = led.n
    m = np.where(per_home > 0, HEADER_BYTES + (row + KEY_BYTES) * per_home, 0).astype(float)
    each = (m.sum() - m) + (n - 1) * m          # deltas/rows to other homes + answers as a home
    led.sent[BACKGROUND, t] += each
    led.recv[BACKGROUND, t] += each
    nz = per_home > 0
    led.msgs[BACKGROUND, t] += (nz.sum() - nz) + (n - 1) * nz
    if n > 1:
        led.rounds[BACKGROUND, t] = np.maximum(led.rounds[BACKGROUND, t], 2)


def _replication(led, t, r, k, row, state):
    n = led.n
    led.access(t, np.ones(len(k), bool))
    if state["sync"] == "held":
        _sync_held(led, t, state["table_per_home"], row)
        return
    home = k % n
    led.send(BACKGROUND, t, r, home, row + KEY_BYTES)       # deltas up
    led.wait(BACKGROUND, t, r[r != home], 2)
    per_owner = np.bincount(np.unique(k) % n, minlength=n)   # fresh rows of every touched key
    nbytes = np.where(per_owner > 0, HEADER_BYTES + (row + KEY_BYTES) * per_owner, 0).astype(float)
    led.sent[BACKGROUND, t] += (n - 1) * nbytes
    led.msgs[BACKGROUND, t] += (n - 1) * (per_owner > 0)
    led.recv[BACKGROUND, t] += nbytes.sum() - nbytes


def _relocation_step(led, t, r, k, row, owner):
    """One clock of Lapse with intents one clock ahead (r, k: unique pairs)."""
    if len(k) == 0:
        return
    n = led.n
    order = np.lexsort(((r - k - t) % n, r != owner[k], k))
    r, k = r[order], k[order]
    first = np.ones(len(k), bool)
    first[1:] = k[1:] != k[:-1]
    win_r, win_k = r[first], k[first]
    move = owner[win_k] != win_r
    led.access(t, ~move if t == 0 else np.ones(int(move.size), bool))
    _relocate(led, t, win_r[move], win_k[move], owner, row)
    lose = ~first
    led.access(t, np.zeros(int(lose.sum()), bool))
    _remote(led, t, r[lose], owner[k[lose]], row)


def _relocation(led, t, r, k, row, state):
    _relocation_step(led, t, r, k, row, state["owner"])


def _nups(led, t, r, k, row, state):
    hot = state["hot"][k]
    led.access(t, np.ones(int(hot.sum()), bool))
    if state["sync"] == "held":
        _sync_held(led, t, state["hot_per_home"], row)
    else:
        hr, hk = r[hot], k[hot]
        home = hk % led.n
        led.send(BACKGROUND, t, hr, home, row + KEY_BYTES)
        led.send(BACKGROUND, t, home, hr, row + KEY_BYTES)
        led.wait(BACKGROUND, t, hr[hr != home], 2)
    _relocation_step(led, t, r[~hot], k[~hot], row, state["owner"])


def adaptive_window(led, t, r, k, row, owner):
    """One intent window of AdaPS; t, r, k: (clock, rank, key) of unique accesses per clock."""
    if len(k) == 0:
        return
    order = np.lexsort((t, r, k))
    t, r, k = t[order], r[order], k[order]
    o = owner[k]
    led.access(t, (t > 0) | (o == r))                      # clock 0: nothing was signalled ahead
    start = np.ones(len(k), bool)
    start[1:] = (k[1:] != k[:-1]) | (r[1:] != r[:-1])
    starts = np.flatnonzero(start)
    ends = np.append(starts[1:], len(k)) - 1
    gr, gk, first, last = r[starts], k[starts], t[starts], t[ends]
    kstart = np.ones(len(gk), bool)
    kstart[1:] = gk[1:] != gk[:-1]
    kid = np.cumsum(kstart) - 1
    nranks = np.bincount(kid)[kid]
    go = owner[gk]
    single = (nranks == 1) & (go != gr)
    _relocate(led, first[single], gr[single], gk[single], owner, row)
    rep = (nranks > 1) & (go != gr)
    rr, rk, ro, rf, rl = gr[rep], gk[rep], go[rep], first[rep], last[rep]
    if len(rk) == 0:
        return
    b, ts = _slot(rf)                                       # create: intent to owner, row back
    led.send(b, ts, rr, ro, KEY_BYTES)
    led.send(b, ts, ro, rr, row + KEY_BYTES)
    led.wait(b, ts, rr, 2)
    led.replicas += np.bincount(ts, None, led.clocks)
    span = rl - rf                          # syncs while held, before the last access
    if span.sum():
        idx = np.repeat(np.arange(len(rk)), span)
        st = rf[idx] + (np.arange(len(idx)) - np.repeat(np.cumsum(span) - span, span))
        led.send(BACKGROUND, st, rr[idx], ro[idx], row + KEY_BYTES)
        led.send(BACKGROUND, st, ro[idx], rr[idx], row + KEY_BYTES)
        led.wait(BACKGROUND, st, rr[idx], 2)
    led.send(BACKGROUND, rl, rr, ro, row + KEY_BYTES)       # drop: residual delta + ack
    led.send(BACKGROUND, rl, ro, rr, KEY_BYTES)
    led.wait(BACKGROUND, rl, rr, 2)


STEPS = {"classic": _classic, "replication": _replication, "relocation": _relocation,
         "nups": _nups}

