"""Matplotlib set-up shared by the figure families: headless backend, imported only when drawing; tick
helpers that keep labels few and short (no mathtext: it is slow and overprints on narrow log ranges)."""

from __future__ import annotations

import math
from pathlib import Path


def pyplot():
    """Return ``matplotlib.pyplot`` on the non-interactive Agg backend (safe on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` atomically as PNG and close it."""
    from hessian_spectra.figures._png import png_bytes
    from hessian_spectra.io import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(fig, dpi=dpi))
    return Path(path)


def short_number(x: float, _pos: object = None) -> str:
    """A compact tick label: 0.01 -> "0.01", 12000 -> "1.2e4", 3e-7 -> "3e-7" (two significant digits)."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if 1e-2 <= abs(x) < 1e4:
        return f"{x:.4g}"
    mantissa, exp = f"{x:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def log_ticks(axis, lo: float, hi: float, max_ticks: int = 5) -> None:
    """Few, short, non-overlapping major ticks on a log ``axis`` spanning [lo, hi] (both > 0); no minor
    ticks. Narrow ranges (under ~1.5 decades) get 1-2-5 ticks so there is always more than one label."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    subs = (1.0, 2.0, 5.0) if decades < 1.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=max_ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(short_number))


def linear_ticks(axis, max_ticks: int = 4) -> None:
    """At most ``max_ticks`` short major ticks on a linear ``axis``."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    axis.set_major_locator(MaxNLocator(nbins=max_ticks, min_n_ticks=2))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(short_number))


def shorten(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters by dropping its middle (``encoder.lay…query.weight``)."""
    if len(name) <= width:
        return name
    keep = max(1, width - 1)
    head = keep // 2
    return name[:head] + "\u2026" + name[len(name) - (keep - head) :]
