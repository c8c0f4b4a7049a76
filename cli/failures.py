"""How a run ends: every exception as one line ``spectra: error: <where>: <what>`` with an exit code, and
library noise (Python warnings, transformers logging, tqdm bars) kept off stderr while a run is going.

``--debug`` (or ``SPECTRA_DEBUG=1``) turns both off: warnings print as they come and a failure prints
its full traceback before the one-line message.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variables that keep libraries imported during a run quiet (restored afterwards).
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}
MAX_MESSAGE = 1000  # characters of an exception message kept on the one line
_PACKAGE_DIR = (
    Path(__file__).resolve().parents[1]
)  # the repository / install root of hessian_spectra's folders
_OUR_FOLDERS = ("spectra", "analyses", "figures", "cli", "hessian_spectra")


@dataclass
class Noise:
    """What libraries tried to print during the run: warnings and log records, one line each."""

    lines: list[str] = field(default_factory=list)

    def summary(self) -> str | None:
        """One line for the end of a successful run, or None when nothing was hidden."""
        if not self.lines:
            return None
        from hessian_spectra.cli.console import safe

        first = safe(" ".join(self.lines[0].split())[:160], markup=False)
        more = f" and {len(self.lines) - 1} more" if len(self.lines) > 1 else ""
        return (
            f"spectra: note: {len(self.lines)} library warning(s) hidden ({first}{more}); --debug shows them"
        )


class _Capture(logging.Handler):
    def __init__(self, noise: Noise):
        super().__init__(logging.WARNING)
        self.noise = noise

    def emit(self, record: logging.LogRecord) -> None:
        self.noise.lines.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def quiet_libraries(noise: Noise) -> Iterator[None]:
    """Collect warnings and WARNING+ log records into ``noise`` instead of stderr; silence progress bars."""
    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    capture = _Capture(noise)
    saved_last_resort = logging.lastResort
    logging.lastResort = capture  # loggers without handlers (accelerate, torch.*) would print here
    tf_restore = _quiet_transformers(capture)
    original_showwarning = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # once per location, whatever filters libraries set

            def show(message, category, filename, lineno, file=None, line=None):
                noise.lines.append(f"{category.__name__}: {message}")

            warnings.showwarning = show
            yield
    finally:
        warnings.showwarning = original_showwarning
        tf_restore()
        logging.lastResort = saved_last_resort
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_transformers(capture: logging.Handler):
    """If transformers is already imported, route its logger into ``capture`` and stop its bars now
    (an import during the run is covered by :data:`QUIET_ENV`). Returns the undo function."""
    tl = sys.modules.get("transformers.utils.logging")
    if tl is None:
        return lambda: None
    level, bars = tl.get_verbosity(), tl.is_progress_bar_enabled()
    tl.set_verbosity_warning()
    tl.disable_default_handler()
    tl.add_handler(capture)
    tl.disable_progress_bar()

    def undo() -> None:
        tl.remove_handler(capture)
        tl.enable_default_handler()
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()

    return undo


def click_exceptions(name: str) -> tuple[type, ...]:
    """The click exception class ``name`` from click and from typer's vendored copy (typer >= 0.2x)."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def raised_in_command(exc: BaseException) -> bool:
    """True when a command's own code (a ``cli/*_cmd.py`` frame) was running when ``exc`` was raised,
    as opposed to the argument parser or the console script itself."""
    here = Path(__file__).resolve().parent
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.name.endswith("_cmd.py") and path.resolve().parent == here:
            return True
    return False


def describe(exc: BaseException, command: str) -> tuple[str, int]:
    """``(<where>: <what>, exit code)`` for any exception that ends a run."""
    from hessian_spectra.errors import Interrupted, SpectraError

    if isinstance(exc, SpectraError):
        return str(exc), 2
    if isinstance(exc, Interrupted):
        return f"{command}: {exc}", 128 + exc.signum
    if isinstance(exc, (KeyboardInterrupt, *click_exceptions("Abort"))):
        return f"{command}: interrupted", 130
    if isinstance(exc, click_exceptions("UsageError")):
        path = exc.ctx.command_path if exc.ctx is not None else "spectra"
        return f"{path}: {' '.join(exc.format_message().split())} (see '{path} --help')", 2
    if isinstance(exc, click_exceptions("ClickException")):
        return f"{command}: {exc.format_message()}", 2
    if isinstance(exc, SystemExit):
        return (
            f"{command}: code run by the tool (a model factory or its imports) called sys.exit({exc.code!r}) "
            "before the run finished; nothing was written", 2,
        )  # fmt: skip
    what = _message(exc)
    if isinstance(exc, MemoryError):
        return (
            f"{command}: out of memory ({what or 'an allocation failed'}); reduce the batch, blocks or probes",
            2,
        )
    if isinstance(exc, RecursionError):
        return f"{command}: input nested too deeply for Python's recursion limit ({what})", 2
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {exc.strerror or what}", 2
    origin = _origin(exc)
    if origin is None:
        return (
            f"{command}: internal error: {type(exc).__name__}: {what} (rerun with --debug for the traceback)",
            2,
        )
    return f"{command}: {type(exc).__name__} in {origin}: {what} (rerun with --debug for the traceback)", 2


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _origin(exc: BaseException) -> str | None:
    """Where the exception was raised when that is not this package: a library's name or a user's
    ``file:line``; None for our own code (an internal error)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    path = Path(frames[-1].filename)
    try:
        rel = path.resolve().relative_to(_PACKAGE_DIR)
        if rel.parts and rel.parts[0] in _OUR_FOLDERS:
            return None
    except (ValueError, OSError):
        pass
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    if path.is_relative_to(Path(os.__file__).parent):
        return "Python's standard library"
    return f"{path}:{frames[-1].lineno}"
