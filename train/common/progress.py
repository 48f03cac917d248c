"""Progress within an epoch on rank 0: a bar on a terminal, plain lines everywhere else.

Redirected to a file, a progress bar is a stream of carriage-return updates (154 of them for
10 short epochs); so the bar (tqdm) is drawn only when the stream is a terminal, and
otherwise one line is written each time another `step` percent of the epoch's batches is done:
``epoch 3: 40% (62/154 batches) 4.1 s, ETA 6.2 s``.
"""

from __future__ import annotations

import sys
import time


class EpochProgress:
    """Counts the batches of one epoch; use as a context manager, call `update` per batch.

    Not thread-safe: call `update` from one thread (the trainer's on_batch callback).
    """

    def __init__(self, total: int, label: str, *, stream=None, step: int = 10):
        if not 1 <= step <= 100:
            raise ValueError(f"step must be a percentage in [1, 100], got {step}")
        self.total, self.label, self.step = total, label, step
        self.stream = sys.stderr if stream is None else stream
        self.done, self._next = 0, step
        self._t0 = time.perf_counter()
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=label, unit="batch", leave=False,
                             mininterval=0.5, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        percent = 100 * self.done // max(self.total, 1)
        if percent >= self._next and self.done < self.total:
            self._next = (percent // self.step + 1) * self.step
            seconds = time.perf_counter() - self._t0
            eta = seconds / self.done * (self.total - self.done)
            print(f"{self.label}: {percent}% ({self.done}/{self.total} batches) {seconds:.1f} s, "
                  f"ETA {eta:.1f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "EpochProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
