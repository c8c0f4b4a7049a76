"""Matplotlib set-up shared by the figure families: headless backend, imported only when drawing."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """Return ``matplotlib.pyplot`` on the non-interactive Agg backend (safe on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` atomically as PNG and close it."""
    import io

    from hessian_spectra.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
