"""Terminal helpers shared by the commands: stderr console, one-line failures, progress bars, and
:func:`safe`, the one escaping helper every name, path and message goes through before it is printed."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

#: C0 and C1 controls (ESC, CSI, BEL, backspace, CR, ...), DEL, line/paragraph separators and the
#: bidirectional overrides/isolates that can make a name display as something else.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object, *, markup: bool = True) -> str:
    """``text`` made harmless to print: control characters and raw escape sequences shown as ``\\xNN``
    (never acted on by the terminal), and rich markup (``[/]``, ``[bold]``, ``[link=...]``) escaped when
    the string goes into a rich print (``markup=False`` for plain prints)."""
    from rich.markup import escape

    cleaned = _CONTROLS.sub(_visible, str(text))
    return escape(cleaned) if markup else cleaned


def err_console():
    """A rich console on stderr (progress and messages never pollute stdout tables/JSON); no emoji codes,
    and no wrapping when stderr is a file or pipe (one message, one line in a log)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, emoji=False, soft_wrap=not sys.stderr.isatty())


def out_console():
    """A rich console on stdout for result tables (wide when piped, so rows are not folded); no emoji
    codes (``:smile:`` in a tensor name stays text)."""
    from rich.console import Console

    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)


def error_line(message: object) -> str:
    """``spectra: error: <message>`` as one line: whitespace runs collapsed, controls made visible."""
    one_line = safe(" ".join(str(message).split()), markup=False)
    return f"spectra: error: {one_line}"


def fail(message: str) -> NoReturn:
    """Stop the command with ``spectra: error: <message>`` (one line, exit code 2, printed by
    :func:`hessian_spectra.cli.main.main`). Raises rather than exiting, so every ``finally`` runs."""
    from hessian_spectra.errors import SpectraError

    raise SpectraError(message)


@contextmanager
def progress_bar(description: str, *, quiet: bool, unit: str = "tensors", phased: bool = False) -> Iterator:
    """Yield ``update(done, total, label)``: rich bars on a terminal, one line every ~10 s on a pipe or
    log file (:mod:`hessian_spectra.cli.progress`), nothing when ``quiet``. ``phased``: the label names
    the phase and done/total count its steps (one bar per phase, each with its own ETA)."""
    from hessian_spectra.cli.progress import PlainLines, RichBars

    if quiet:
        yield lambda done, total, label="": None
        return
    console = err_console()
    if not console.is_terminal:
        lines = PlainLines(description, sys.stderr, unit=unit, phased=phased)
        yield lines
        lines.close()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=True,
    ) as progress:
        yield RichBars(progress, description, phased=phased)
