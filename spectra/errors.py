"""Errors the tool raises on purpose: each renders as one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SpectraError(Exception):
    """Base class for every error the CLI turns into a one-line message and exit code 2."""


class InputError(SpectraError):
    """Bad user input (missing/corrupt/unsafe checkpoint, NaN weights where fatal, wrong shapes).

    ``str(err)`` is ``"<path>: <problem>"`` so the CLI can print it as the whole message.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConvergenceWarning(UserWarning):
    """An iterative method stopped before meeting its tolerance; the result says how far off it is."""


class OutputError(SpectraError):
    """An output cannot be written (``--out`` is a file, not writable, the disk is full, ...).

    ``str(err)`` is ``"<path>: <problem>"``; nothing partial is left behind when it is raised.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class Interrupted(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt, not an error class
    """SIGTERM/SIGHUP (or SIGINT where its handler was the default) arrived while outputs were staged.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` blocks do not swallow it; the CLI
    turns it into one line and exit code 128 + ``signum``.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")
