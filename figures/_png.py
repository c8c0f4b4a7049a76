"""Figures as PNG bytes (for embedding in a self-contained HTML report as data URIs)."""

from __future__ import annotations

import base64
import io


def png_bytes(fig, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes and close it."""
    from hessian_spectra.figures._mpl import pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``: no external file needed."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
