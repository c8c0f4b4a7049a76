"""Terminal helpers shared by the commands: stderr console, one-line failures, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


def err_console():
    """A rich console on stderr (progress and messages never pollute stdout tables/JSON)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def out_console():
    """A rich console on stdout for result tables (wide when piped, so rows are not folded)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``spectra: error: <message>`` as one line on stderr and exit with ``code``."""
    one_line = " ".join(str(message).split())
    print(f"spectra: error: {one_line}", file=sys.stderr)
    raise SystemExit(code)


@contextmanager
def progress_bar(description: str, *, quiet: bool, unit: str = "tensors") -> Iterator:
    """Yield ``update(done, total, label)``; a rich bar with ETA on stderr unless ``quiet``."""
    if quiet:
        yield lambda done, total, label="": None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[label]}"),
        console=err_console(),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str = "") -> None:
            progress.update(task, completed=done, total=total, label=label[-60:])

        yield update
