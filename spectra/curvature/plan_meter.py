"""Measured work of a Hessian run, in the plan's units: per phase the wall seconds, HVPs, pruned block
backwards, gradients (first-order backward passes) and forward passes, and the peak memory.

Peak memory: on CPU the process high-water mark (``VmHWM``, reset per phase through
``/proc/self/clear_refs``; where that is not allowed, RSS sampled every 5 ms by a thread); on CUDA
``torch.cuda.max_memory_allocated`` (reset per phase). tracemalloc cannot see torch's allocator, so it
is not used.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FULL_HVP_LABELS",
    "PeakMemory",
    "PhaseActual",
    "NO_METER",
    "PhaseMeter",
    "actual_dict",
    "measure_phase",
]

#: Progress labels whose steps are full-model HVPs.
FULL_HVP_LABELS = ("Lanczos", "SLQ", "exact Hessian")

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


class PeakMemory:
    """Peak bytes of the process (CPU) or of the device allocator (CUDA) since the last :meth:`reset`."""

    def __init__(self, device: torch.device | str | None = None):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = dev.type == "cuda" and torch.cuda.is_available()
        self.device = dev
        self.source = "cuda max_memory_allocated" if self.cuda else "process VmHWM"
        self._sampled = 0
        self._stop: threading.Event | None = None
        if not self.cuda and not self._can_clear():
            self.source = "RSS sampled every 5 ms"
            self._start_sampler()

    @staticmethod
    def _can_clear() -> bool:
        try:
            _CLEAR.write_text("5")
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def _start_sampler(self) -> None:
        self._stop = threading.Event()

        def sample() -> None:
            assert self._stop is not None
            while not self._stop.wait(0.005):
                self._sampled = max(self._sampled, self.current())

        threading.Thread(target=sample, daemon=True, name="spectra-rss").start()

    def current(self) -> int:
        """Bytes in use now (RSS, or CUDA allocated)."""
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        return _status_kib("VmRSS") or 0

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._stop is None:
            _CLEAR.write_text("5")
        else:
            self._sampled = self.current()

    def peak(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._stop is None:
            return max(_status_kib("VmHWM") or 0, self.current())
        return max(self._sampled, self.current())

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()


@dataclass
class PhaseActual:
    """What one phase did: wall seconds, work counts and the peak memory (bytes, whole process)."""

    name: str
    seconds: float = 0.0
    hvps: int = 0
    block_backwards: int = 0
    gradients: int = 0
    forwards: int = 0
    peak_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PhaseMeter:
    """Times phases and counts their work. :meth:`attach` wraps the operator's graph build and forward
    (instance attributes, removed by :meth:`detach`); :meth:`begin` starts a phase (ending the last);
    ``tick`` counts HVPs; :meth:`add_block_backwards` the pruned backwards a phase reports."""

    memory: PeakMemory
    phases: list[PhaseActual] = field(default_factory=list)
    baseline_bytes: int = 0
    _t0: float = 0.0
    _op: Any = None

    def attach(self, op: Any) -> None:
        self._op = op
        build, call = op._build, op._call

        def counted_build(*a: Any, **k: Any) -> Any:
            if self.phases:
                self.phases[-1].gradients += 1
            return build(*a, **k)

        def counted_call(*a: Any, **k: Any) -> Any:
            if self.phases:
                self.phases[-1].forwards += 1
            return call(*a, **k)

        op._build, op._call = counted_build, counted_call

    def detach(self) -> None:
        if self._op is not None:
            for key in ("_build", "_call"):
                self._op.__dict__.pop(key, None)
            self._op = None

    def begin(self, name: str) -> None:
        """Start phase ``name``; the phase still open under that name continues (work split into parts)."""
        if self.phases and self.phases[-1].name == name and not self.phases[-1].seconds:
            return
        self._close()
        if not self.phases:
            self.baseline_bytes = self.memory.current()
        self.memory.reset()
        self.phases.append(PhaseActual(name))
        self._t0 = time.perf_counter()

    def _close(self) -> None:
        if self.phases and not self.phases[-1].seconds:
            p = self.phases[-1]
            p.seconds = time.perf_counter() - self._t0
            p.peak_bytes = self.memory.peak()

    def tick(self, label: str) -> None:
        """One progress step: a full-model HVP (Lanczos, SLQ, exact Hessian column) counts as an HVP;
        block steps are counted by :meth:`add_block_backwards` instead."""
        if self.phases and label in FULL_HVP_LABELS:
            self.phases[-1].hvps += 1

    def add_block_backwards(self, n: int) -> None:
        if self.phases:
            self.phases[-1].block_backwards += n

    def finish(self) -> list[PhaseActual]:
        """End the last phase, unwrap the operator, stop sampling; the phases in order."""
        self._close()
        self.detach()
        self.memory.close()
        return self.phases


@dataclass
class _Holder:
    done: PhaseActual | None = None


@contextlib.contextmanager
def measure_phase(name: str, model: Any, *, enabled: bool = True) -> Iterator[_Holder]:
    """Time a phase run outside the operator (the head-structure check): seconds, peak memory and the
    model's forward passes (a forward hook); each of its forwards builds a graph, so gradients = forwards.
    The caller fills in the work counts it knows; ``holder.done`` is set on exit (None when disabled)."""
    holder = _Holder()
    if not enabled:
        yield holder
        return
    memory = PeakMemory(next((p.device for p in model.parameters()), None))
    memory.reset()
    phase = PhaseActual(name)
    hook = model.register_forward_pre_hook(lambda *_: setattr(phase, "forwards", phase.forwards + 1))
    t0 = time.perf_counter()
    try:
        yield holder
    finally:
        hook.remove()
        phase.seconds = time.perf_counter() - t0
        phase.peak_bytes = memory.peak()
        phase.gradients = phase.forwards
        memory.close()
        holder.done = phase


def actual_dict(phases: Sequence[Any]) -> dict[str, Any] | None:
    """Totals and per-phase work of a planned run, in the plan's units."""
    if not phases:
        return None
    keys = ("seconds", "hvps", "block_backwards", "gradients", "forwards")
    totals = {k: sum(getattr(p, k) for p in phases) for k in keys}
    return {
        **totals,
        "peak_bytes": max(p.peak_bytes for p in phases),
        "phases": [p.to_dict() for p in phases],
    }


class _NoMeter:
    """The meter of an unplanned run: every call does nothing, :meth:`finish` returns no phases."""

    def begin(self, name: str) -> None: ...

    def tick(self, label: str) -> None: ...

    def add_block_backwards(self, n: int) -> None: ...

    def finish(self) -> list[PhaseActual]:
        return []


NO_METER = _NoMeter()
