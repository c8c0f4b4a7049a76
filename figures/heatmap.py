"""Pairwise Jensen-Shannon distances between block spectra as a labelled heatmap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hessian_spectra.figures._mpl import pyplot
from hessian_spectra.figures._png import png_bytes


def plot_js_heatmap(names: Sequence[str], matrix: np.ndarray, *, title: str = "") -> bytes:
    """Heatmap of the symmetric JS-distance matrix (0..1) with block names on both axes; PNG bytes."""
    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    n = len(names)
    size = min(14.0, max(4.0, 0.28 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    font = 7 if n <= 30 else 5 if n <= 60 else 3
    ax.set_xticks(range(n), labels=list(names), rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=list(names), fontsize=font)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="JS distance")
    ax.set_title(title or "JS distance between block spectra", fontsize=9)
    return png_bytes(fig)
