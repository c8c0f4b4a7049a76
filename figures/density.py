"""Spectral-density figures: a grid of per-block densities, and the full-model density with the
extreme eigenvalues (Lanczos) marked."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from hessian_spectra.figures._mpl import pyplot
from hessian_spectra.figures._png import png_bytes


def plot_block_density_grid(
    names: Sequence[str],
    grids: Sequence[np.ndarray],
    densities: Sequence[np.ndarray],
    *,
    title: str = "",
    max_panels: int = 48,
) -> bytes:
    """One small panel per block: its density (log y) on its own eigenvalue range. Returns PNG bytes.

    Blocks beyond ``max_panels`` are left out (the title says how many are shown).
    """
    plt = pyplot()
    n = min(len(names), max_panels)
    cols = min(6, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        g, d = np.asarray(grids[i], dtype=float), np.asarray(densities[i], dtype=float)
        floor = max(float(d.max()) * 1e-6, 1e-300) if d.size else 1e-300
        ax.semilogy(g, np.maximum(d, floor), lw=1, color="#4c72b0")
        ax.set_title(names[i], fontsize=6)
        ax.tick_params(labelsize=5)
    shown = f" ({n} of {len(names)} blocks)" if n < len(names) else ""
    fig.suptitle((title or "block spectral densities") + shown, fontsize=9)
    fig.supxlabel("eigenvalue", fontsize=7)
    fig.subplots_adjust(hspace=0.6, wspace=0.35)
    return png_bytes(fig, dpi=80)


def plot_full_density(
    grid: np.ndarray,
    values: np.ndarray,
    *,
    top: Sequence[float] = (),
    bottom: Sequence[float] = (),
    title: str = "",
) -> bytes:
    """The full-model SLQ density (log y) with the Lanczos top/bottom eigenvalues as vertical lines."""
    plt = pyplot()
    g, d = np.asarray(grid, dtype=float), np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    floor = max(float(d.max()) * 1e-8, 1e-300) if d.size else 1e-300
    ax.semilogy(g, np.maximum(d, floor), color="#4c72b0", lw=1.2, label="SLQ density")
    for i, x in enumerate(top):
        ax.axvline(x, color="#c44e52", ls="--", lw=0.9, label="top eigenvalues (Lanczos)" if i == 0 else None)
    for i, x in enumerate(bottom):
        ax.axvline(
            x, color="#55a868", ls=":", lw=0.9, label="bottom eigenvalues (Lanczos)" if i == 0 else None
        )
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or "full-model Hessian spectral density", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)
