"""Entrypoint helpers: any error on any rank ends the whole MPI job, with its rank named.

Why at the entrypoint and not in the ParameterServer: most failures of a training job happen
before a PS exists (a bad option, an unwritable output folder, a dataset that cannot be
generated) or after it was closed (writing results). A rank that dies there leaves its peers
waiting forever in their next collective. ``run_main`` installs the hooks first, so every
later failure, on any thread, prints ``[jaxps rank R] ...`` and calls ``MPI_Abort``.

``run_on_root`` is the other half: work that only rank 0 does (creating the output folder,
generating a cached dataset) runs there, and its outcome -- the result or the exception --
reaches every rank, so all ranks fail together with the same message instead of one rank
failing and the others waiting.
"""

from __future__ import annotations

import pickle
import sys
import threading
import traceback
from typing import Any, Callable

from mpi4py import MPI

from .abort import ABORT_HOOKS, abort_now
from .peerwatch import PeerWatch

_hooks_installed = False
_watch: PeerWatch | None = None


def _leaving() -> None:
    """This rank ends on purpose: its sentinel and its host's others must not report it."""
    if _watch is not None:
        _watch.leaving("bye")


class JobExit(SystemExit):
    """End the program with ``code`` and ``message``, raised by every rank at the same point.

    ``run_main`` exits with it without aborting the MPI job (no rank is left waiting), and
    rank 0 prints the message. Use it for a planned non-zero exit, such as "interrupted,
    checkpoint written to ...".
    """

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message


def _rank() -> int:
    return MPI.COMM_WORLD.Get_rank()


def _say(message: str) -> None:
    sys.stderr.write(f"[jaxps rank {_rank()}] {message}\n")
    sys.stderr.flush()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def install_abort_hooks() -> None:
    """Make an uncaught exception on any thread print it and abort the whole MPI job.

    Idempotent. In a 1-process world only the rank-naming line is added (no abort: the
    process ends by itself). Thread-safety: call from the main thread, early.
    """
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    prev_hook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        prev_hook(exc_type, exc, tb)
        _say(f"error: {_describe(exc)}")
        if MPI.COMM_WORLD.Get_size() > 1:
            _say("aborting the MPI job")
            abort_now()

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        _say(f"error in thread {args.thread.name if args.thread else '?'}: "
             f"{_describe(args.exc_value)}")
        if MPI.COMM_WORLD.Get_size() > 1:
            _say("aborting the MPI job")
            abort_now()

    sys.excepthook = excepthook
    threading.excepthook = thread_hook


def run_main(main: Callable[..., Any], *args, **kwargs) -> Any:
    """Run an entrypoint's ``main(*args, **kwargs)`` so that no failure can hang the job.

    Installs the abort hooks and (with several ranks) has rank 0 print each rank's pid and
    host, so that a launcher's report of a killed PID names its rank; then calls ``main``. An exception (or a non-zero
    ``SystemExit``) on any rank prints the traceback and ``[jaxps rank R] error: ...``;
    with more than one rank it then aborts every rank (``MPI_Abort``, exit status 1),
    within about a second. With one rank it exits with status 1 (``SystemExit``'s own
    status for ``sys.exit``/argparse errors, 130 for Ctrl-C). A ``JobExit`` (raised by all
    ranks together) exits with its status and no abort. Returns ``main``'s result.
    """
    install_abort_hooks()
    _announce_ranks()
    try:
        result = main(*args, **kwargs)
        _leaving()
        return result
    except JobExit as e:
        _leaving()
        if _rank() == 0:
            _say(e.message)
        raise SystemExit(e.code) from None
    except SystemExit as e:
        code = e.code
        if code in (None, 0):
            _leaving()
            raise
        if isinstance(code, str):
            _say(code)
            code = 1
        if MPI.COMM_WORLD.Get_size() > 1:
            _say(f"exiting with status {code}: aborting the MPI job")
            abort_now()
        raise SystemExit(code) from None
    except KeyboardInterrupt:
        _say("interrupted")
        if MPI.COMM_WORLD.Get_size() > 1:
            abort_now()
        raise SystemExit(130) from None
    except BaseException as e:  # noqa: BLE001 - every error must end the job, and is shown
        traceback.print_exc(file=sys.stderr)
        _say(f"error: {_describe(e)}")
        if MPI.COMM_WORLD.Get_size() > 1:
            _say("aborting the MPI job")
            abort_now()
        raise SystemExit(1) from None


def _announce_ranks() -> None:
    """Rank 0 prints every rank's pid and host once, and every rank starts watching its
    same-host peers (``PeerWatch``): a rank killed outright (SIGKILL, out of memory) cannot
    say who it was, and the launcher's report names only its PID."""
    global _watch
    world = MPI.COMM_WORLD
    if world.Get_size() == 1 or _watch is not None:
        return
    import os
    import socket
    table = world.allgather((os.getpid(), socket.gethostname()))
    if world.Get_rank() == 0:
        _say(f"{world.Get_size()} ranks: " + ", ".join(f"rank {r} = pid {p}@{h}"
                                                      for r, (p, h) in enumerate(table)))
    _watch = PeerWatch(world, table)
    ABORT_HOOKS.append(lambda: _watch.leaving("abort"))


def run_on_root(fn: Callable[[], Any], *, comm: MPI.Comm | None = None) -> Any:
    """Collective: run ``fn()`` on rank 0 of ``comm``; every rank returns its result.

    If ``fn`` raises, every rank raises the same exception (rank 0's traceback is printed
    there), so a failure of rank-0-only work fails all ranks alike. The result and the
    exception must be picklable (an unpicklable exception arrives as RuntimeError with its
    message). Do not call while a ParameterServer on these ranks needs service from this
    thread's rank (it uses a blocking broadcast; see ``ParameterServer`` on MPI in the
    caller's code): call it before the PS exists, or after ``ps.barrier()``.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    if comm.Get_size() == 1:
        return fn()
    outcome: tuple = (False, None)
    if comm.Get_rank() == 0:
        try:
            outcome = (True, fn())
        except Exception as e:  # noqa: BLE001 - forwarded to every rank and raised there
            outcome = (False, e)
        try:
            pickle.dumps(outcome)
        except Exception:  # noqa: BLE001
            value = outcome[1]
            outcome = (False, RuntimeError(_describe(value) if isinstance(value, BaseException)
                                           else f"unpicklable result {type(value).__name__}"))
    ok, value = comm.bcast(outcome, root=0)
    if ok:
        return value
    raise value
