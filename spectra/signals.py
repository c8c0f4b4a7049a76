"""Signals as exceptions: SIGINT/SIGTERM/SIGHUP raise :class:`~hessian_spectra.errors.Interrupted` so that
every ``finally`` (staging folders, restored models) runs; and a window in which they wait.

Used by :mod:`hessian_spectra.output_set` (while outputs are staged) and by the CLI (for a whole run).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hessian_spectra.errors import Interrupted

__all__ = ["TERMINATING", "blocked_signals", "raising_signals"]

#: The signals a user or a job scheduler sends to stop a run.
TERMINATING: tuple[int, ...] = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None
)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum, frame):
    raise Interrupted(signum)


@contextmanager
def raising_signals(*, only_default: bool = True) -> Iterator[None]:
    """Make :data:`TERMINATING` raise :class:`Interrupted` for the duration; previous handlers restored.

    ``only_default`` (library use) replaces only handlers that would kill the process without cleanup
    (``SIG_DFL``): Python's own SIGINT handler (KeyboardInterrupt) and handlers the caller installed are
    kept. ``only_default=False`` (the CLI) replaces every handler but ``SIG_IGN``. A no-op off the main
    thread, where Python cannot set handlers.
    """
    if not _main_thread():
        yield
        return
    saved = {}
    for sig in TERMINATING:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN or (only_default and current is not signal.SIG_DFL):
            continue
        saved[sig] = current
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


@contextmanager
def blocked_signals() -> Iterator[None]:
    """Hold :data:`TERMINATING` back (``pthread_sigmask``) for a short critical section; a signal that
    arrives meanwhile is delivered right after it."""
    if not _main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
