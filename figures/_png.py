"""Figures as PNG bytes (for embedding in a self-contained HTML report as data URIs)."""

from __future__ import annotations

import base64
import io


def png_bytes(fig, dpi: int = 100, close: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes (fast zlib level; the layout is fixed by the caller, so no tight bbox
    pass) and close it unless ``close`` is False (a canvas reused for the next figure)."""
    from hessian_spectra.figures._mpl import pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 2})
    if close:
        pyplot().close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``: no external file needed."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
