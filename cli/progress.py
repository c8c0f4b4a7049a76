"""Progress on stderr that tells the truth: one bar per phase with an ETA from the phase's own measured
step times (a terminal), or plain periodic lines (a pipe or a log file); nothing with ``--quiet``.

The callback is ``update(done, total, label)``. With ``phased=True`` the label names the phase (the
Hessian probe's "Lanczos", "SLQ", "block SLQ", "exact blocks") and ``done``/``total`` count that phase's
steps: a new label starts a new bar. Otherwise the label is a detail (a tensor name) of one bar.
The ETA is ``elapsed / done x (total - done)`` over the current phase only: steps of one phase cost
about the same, so it does not jump when a phase of cheap HVPs is followed by one of expensive block
steps (it errs high when a lockstep phase's chains finish early).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["PhaseClock", "PlainLines", "RichBars", "format_seconds"]

#: Seconds between two plain progress lines when stderr is not a terminal.
LINE_INTERVAL = 10.0


def format_seconds(seconds: float | None) -> str:
    """``75.2 -> "1m15s"``, ``3.4 -> "3s"``, ``None -> "?"`` (short, fixed-format for logs)."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PhaseClock:
    """Tracks the current phase: its label, start time, done/total and the ETA from its step times."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.phase: str | None = None
        self.phase_started = self.last_step = self.started
        self.done = 0
        self.total = 0

    def update(self, done: int, total: int, phase: str | None) -> bool:
        """Record a step; True when ``phase`` differs from the current one (a new phase began, at the
        previous step's end: its first step's work started then)."""
        new = phase != self.phase
        if new:
            self.phase, self.phase_started = phase, self.last_step
        self.done, self.total = int(done), max(int(total), int(done))
        self.last_step = self.clock()
        return new

    @property
    def elapsed(self) -> float:
        """Seconds in the current phase."""
        return self.clock() - self.phase_started

    @property
    def finished_after(self) -> float:
        """Seconds the current phase took up to its last step."""
        return self.last_step - self.phase_started

    @property
    def eta(self) -> float | None:
        """Seconds left in the current phase, from its mean step time so far (None before a step)."""
        if self.done <= 0:
            return None
        return self.elapsed / self.done * (self.total - self.done)


class PlainLines:
    """``update(done, total, label)`` writing one line at most every ``interval`` seconds to ``stream``:
    ``spectra: <title>: <phase> <done>/<total> <unit>, <elapsed> elapsed, ETA <eta>``; a phase that
    printed a line also prints one when it ends (so a log shows every long phase finish)."""

    def __init__(self, title: str, stream: TextIO, *, unit: str, phased: bool, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.title, self.stream, self.unit, self.phased = title, stream, unit, phased
        self.interval = LINE_INTERVAL if interval is None else interval
        self.state = PhaseClock(clock)
        self.last = self.state.started
        self._printed_phase = False

    def _line(self, finished: bool = False) -> str:
        s = self.state
        phase = f"{s.phase} " if self.phased and s.phase else ""
        took = s.finished_after if finished else s.elapsed
        what = f"{self.title}: {phase}{s.done}/{s.total} {self.unit}, {format_seconds(took)} elapsed"
        return f"spectra: {what}, {'done' if finished else 'ETA ' + format_seconds(s.eta)}"

    def _emit(self, line: str) -> None:
        from hessian_spectra.cli.console import safe

        print(safe(line, markup=False), file=self.stream, flush=True)
        self.last = self.state.clock()

    def __call__(self, done: int, total: int, label: str = "") -> None:
        if self.phased and label != self.state.phase and self.state.phase is not None:
            self.close()
        self.state.update(done, total, label if self.phased else None)
        if self.phased and label == "done":
            return
        if self.state.done < self.state.total and self.state.clock() - self.last >= self.interval:
            self._emit(self._line())
            self._printed_phase = True

    def close(self) -> None:
        """End the current phase (a closing line when the phase printed one)."""
        if self._printed_phase:
            self._emit(self._line(finished=True))
        self._printed_phase = False


class RichBars:
    """``update(done, total, label)`` driving rich bars: one per phase (``phased``), each with its own ETA."""

    def __init__(self, progress: Any, title: str, *, phased: bool):
        self.progress, self.title, self.phased = progress, title, phased
        self.state = PhaseClock()
        self.task: Any = None

    def __call__(self, done: int, total: int, label: str = "") -> None:
        from hessian_spectra.cli.console import safe

        if self.phased and label == "done":
            self._finish()
            return
        if self.phased and label != self.state.phase:
            self._finish()  # the previous phase's bar ends at its own count
        self.state.update(done, total, label if self.phased else None)
        if self.task is None:
            name = f"{self.title}: {label}" if self.phased else self.title
            self.task = self.progress.add_task(safe(name), total=None, detail="", eta="?")
        detail = "" if self.phased else safe(label[-60:])
        eta = format_seconds(self.state.eta)
        self.progress.update(
            self.task, completed=self.state.done, total=self.state.total, detail=detail, eta=eta
        )

    def _finish(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, total=self.state.done, completed=self.state.done, eta="0s")
        self.task = None
