"""The one number format of every human-readable output (terminal, markdown, HTML): a few significant
digits, plain notation where it reads naturally, scientific beyond; JSON keeps full precision."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt", "fmt_ratio", "fmt_percent", "fmt_bytes", "DIGITS"]

#: Significant digits shown by default: enough to compare, few enough to read.
DIGITS = 4
#: Plain (non-scientific) notation for magnitudes in [PLAIN_LOW, PLAIN_HIGH).
PLAIN_LOW, PLAIN_HIGH = 1e-3, 1e5


def fmt(x: Any, digits: int = DIGITS) -> str:
    """``x`` for a person: None/NaN -> "-", +-inf -> "inf"/"-inf", bool -> "yes"/"no", int exact, float to
    ``digits`` significant digits (plain between 1e-3 and 1e5, else ``1.235e+05``), anything else ``str``."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy / torch scalars
        return fmt(x.item(), digits)
    if not isinstance(x, float):
        return str(x)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    mag = abs(x)
    if PLAIN_LOW <= mag < PLAIN_HIGH:
        exponent = math.floor(math.log10(mag))
        decimals = max(0, digits - 1 - exponent)
        text = f"{x:.{decimals}f}"
        if abs(float(text)) >= PLAIN_HIGH:  # rounding carried past the plain range: 99999.99 -> 1e+05
            return fmt(float(text), digits)
        return _strip(text)
    mantissa, _, exp = f"{x:.{digits - 1}e}".partition("e")
    return f"{_strip(mantissa)}e{exp}"


def fmt_ratio(x: Any, digits: int = 3) -> str:
    """A ratio such as a spread: ``fmt`` with a trailing ``x`` (``"248x"``), "-" when unknown."""
    text = fmt(x, digits)
    return text if text == "-" else f"{text}x"


def fmt_percent(x: Any, digits: int = 3) -> str:
    """A fraction in [0, 1] as a percentage to ``digits`` significant digits (``0.1234`` -> ``"12.3%"``)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{fmt(100.0 * float(x), digits)}%"


def fmt_bytes(n: Any) -> str:
    """A byte count in binary units to 3 significant digits (``31104`` -> ``"30.4 KiB"``)."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{fmt(n / size, 3)} {unit}"
    return f"{fmt(int(n))} B"


def _strip(text: str) -> str:
    """Drop trailing zeros of a decimal fraction (``"1.500"`` -> ``"1.5"``, ``"2.000"`` -> ``"2"``)."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
