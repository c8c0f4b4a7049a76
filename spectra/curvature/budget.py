"""Budgets of a Hessian run in the user's units: ``--time-limit`` durations (90s, 10m, 1h30m),
``--max-memory`` sizes (4GiB, 512MB), the ``--budget quick|standard|thorough`` presets, and the smallest
plan still worth running. How a plan is fitted to them: :mod:`hessian_spectra.curvature.plan`."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Any

from hessian_spectra.errors import InputError

__all__ = [
    "BUDGETS",
    "MIN_PROBES",
    "MIN_STEPS",
    "apply_budget",
    "format_bytes",
    "format_seconds",
    "parse_bytes",
    "parse_duration",
]

#: Probe and step counts of each ``--budget`` (full-model SLQ and block SLQ alike). "standard" is the
#: default of :class:`~hessian_spectra.curvature.probe.HessianSettings`.
BUDGETS: dict[str, dict[str, int]] = {
    "quick": {"probes": 4, "steps": 30, "block_probes": 4, "block_steps": 30},
    "standard": {"probes": 10, "steps": 50, "block_probes": 10, "block_steps": 50},
    "thorough": {"probes": 20, "steps": 100, "block_probes": 20, "block_steps": 100},
}
#: The smallest useful plan: 3 probes (a Student-t interval over probes needs >= 2; 3 keeps it finite
#: and not absurdly wide) and 20 Lanczos steps (SLQ density L1 error ~0.5 at 20 steps, REFERENCE s2).
MIN_PROBES = 3
MIN_STEPS = 20
#: Lanczos steps for the extreme eigenvalues never go below this (top-k needs room to converge; 15
#: keeps the basis in one 16-row chunk, which matters at 100M parameters: 16 x 392 MB).
MIN_LANCZOS_STEPS = 15

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?", re.IGNORECASE)
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, None: 1.0}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """Seconds in ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2.5m"`` or a bare number of seconds."""
    s = str(text).strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if m is None or m.end() == pos:
            raise InputError(flag, f"not a duration: {text!r} (e.g. 90s, 10m, 1h30m)")
        total += float(m.group(1)) * _SECONDS[m.group(2)]
        pos = m.end()
    if not s or total <= 0:
        raise InputError(flag, f"must be a positive duration (e.g. 90s, 10m, 1h), got {text!r}")
    return total


def parse_bytes(text: str, flag: str = "--max-memory") -> int:
    """Bytes in ``"4GiB"``, ``"512MiB"``, ``"4GB"`` (powers of 1000), ``"4G"`` (taken as GiB) or a number."""
    m = _BYTES.match(str(text))
    if m is None:
        raise InputError(flag, f"not a size: {text!r} (e.g. 4GiB, 512MiB)")
    unit = (m.group(2) or "").lower()
    power = " kmgt".index(unit[0]) if unit and unit[0] in "kmgt" else 0
    base = 1000 if unit.endswith("b") and not unit.endswith("ib") and power else 1024
    value = int(float(m.group(1)) * base**power)
    if value <= 0:
        raise InputError(flag, f"must be a positive size, got {text!r}")
    return value


def apply_budget(settings: Any) -> Any:
    """``settings`` with the probe/step counts of ``settings.budget`` wherever they are still at the
    class defaults (explicit values win); unchanged without a budget."""
    if not getattr(settings, "budget", None):
        return settings
    if settings.budget not in BUDGETS:
        raise InputError("--budget", f"unknown budget {settings.budget!r}; use one of {', '.join(BUDGETS)}")
    defaults = {f.name: f.default for f in fields(settings)}
    preset = BUDGETS[settings.budget]
    return replace(settings, **{k: v for k, v in preset.items() if getattr(settings, k) == defaults[k]})


def format_seconds(s: float) -> str:
    """``"42 s"``, ``"6.5 min"``, ``"1.2 h"``."""
    if s < 90:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def format_bytes(n: float) -> str:
    """``"812 MiB"``, ``"3.75 GiB"``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"
