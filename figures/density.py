"""Spectral-density figures: per-block densities (one panel per block up to a size, one per block group
beyond it, flat blocks marked as such), and the full-model density with the Lanczos extremes marked."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
from hessian_spectra.figures._mpl import linear_ticks, log_ticks, pyplot, shorten
from hessian_spectra.figures._png import png_bytes

__all__ = ["MAX_BLOCK_PANELS", "draw_block_density_grid", "plot_block_density_grid", "draw_full_density",
           "plot_full_density"]  # fmt: skip

#: Up to this many blocks get a panel each; beyond, one panel per block group (every block overlaid).
MAX_BLOCK_PANELS = 24
FLAT_TEXT = "flat: Hessian = 0\nup to rounding"


def _grid_shape(n: int) -> tuple[int, int]:
    cols = min(6, max(1, n))
    return max(1, math.ceil(n / cols)), cols


def _density_panel(ax, grid: np.ndarray, dens: np.ndarray, title: str) -> None:
    floor = max(float(dens.max()) * 1e-6, 1e-300) if dens.size else 1e-300
    vals = np.maximum(dens, floor)
    ax.plot(grid, vals, lw=1, color="#4c72b0")
    ax.set_yscale("log")
    log_ticks(ax.yaxis, floor, max(float(vals.max()), floor * 10), max_ticks=3)
    linear_ticks(ax.xaxis, 3)
    ax.set_title(title, fontsize=6)
    ax.tick_params(labelsize=5)


def _flat_panel(ax, title: str) -> None:
    ax.plot([0.0], [0.5], marker="x", color="#c44e52", ms=8, ls="none")
    ax.text(0.5, 0.2, FLAT_TEXT, transform=ax.transAxes, ha="center", fontsize=6, color="#c44e52")
    ax.set_xlim(-1, 1)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([0.0])
    ax.set_title(title, fontsize=6)
    ax.tick_params(labelsize=5)


def draw_block_density_grid(
    names: Sequence[str],
    grids: Sequence[np.ndarray],
    densities: Sequence[np.ndarray],
    *,
    groups: Sequence[str] | None = None,
    flat: Collection[str] = (),
    title: str = "",
    max_panels: int = MAX_BLOCK_PANELS,
):
    """The figure: one panel per block (log density on the block's own eigenvalue range) when there are
    at most ``max_panels`` blocks, else one panel per group with every block's density on its own
    normalised axis (eigenvalue / max |eigenvalue|), the median and the 10-90% band. Flat blocks get a
    marker and a note instead of a density."""
    plt = pyplot()
    n = len(names)
    per_block = n <= max_panels or groups is None
    if per_block:
        n = min(n, max_panels)
        rows, cols = _grid_shape(n)
        fig, axes = plt.subplots(
            rows, cols, figsize=(2.3 * cols, 1.9 * rows), squeeze=False, layout="constrained"
        )
        for i, ax in enumerate(axes.ravel()):
            if i >= n:
                ax.axis("off")
                continue
            label = shorten(names[i], 30)
            if names[i] in flat:
                _flat_panel(ax, label)
            else:
                _density_panel(ax, np.asarray(grids[i], float), np.asarray(densities[i], float), label)
        shown = f" ({n} of {len(names)} blocks)" if n < len(names) else ""
        fig.suptitle((title or "block spectral densities") + shown, fontsize=9)
        fig.supxlabel("eigenvalue", fontsize=7)
        return fig
    order = list(dict.fromkeys(groups))
    if len(order) > max_panels:  # keep the largest groups, pool the rest
        counts = {g: list(groups).count(g) for g in order}
        keep = set(sorted(order, key=lambda g: -counts[g])[: max_panels - 1])
        groups = [g if g in keep else "other groups" for g in groups]
        order = [g for g in order if g in keep] + ["other groups"]
    rows, cols = _grid_shape(len(order))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, 2.1 * rows), squeeze=False, layout="constrained"
    )
    x = np.linspace(-1.0, 1.0, 201)
    for ax, g in zip(axes.ravel(), order + [None] * (rows * cols - len(order)), strict=True):
        if g is None:
            ax.axis("off")
            continue
        idx = [i for i, gi in enumerate(groups) if gi == g]
        live = [i for i in idx if names[i] not in flat]
        curves = []
        for i in live:
            grid, dens = np.asarray(grids[i], float), np.asarray(densities[i], float)
            scale = float(np.max(np.abs(grid))) or 1.0
            curves.append(np.interp(x, grid / scale, dens * scale, left=0.0, right=0.0))
        suffix = f" ({len(idx)} blocks" + (f", {len(idx) - len(live)} flat)" if len(live) < len(idx) else ")")
        label = shorten(g, 46 - len(suffix)) + suffix
        if not curves:
            _flat_panel(ax, label)
            continue
        c = np.array(curves)
        floor = max(float(c.max()) * 1e-6, 1e-300)
        c = np.maximum(c, floor)
        for row in c[:: max(1, len(c) // 40)]:
            ax.plot(x, row, color="#4c72b0", lw=0.5, alpha=0.2)
        ax.fill_between(
            x, np.percentile(c, 10, axis=0), np.percentile(c, 90, axis=0), color="#4c72b0", alpha=0.25
        )
        ax.plot(x, np.median(c, axis=0), color="#1f3b70", lw=1.2)
        ax.set_yscale("log")
        log_ticks(ax.yaxis, floor, float(c.max()), max_ticks=3)
        linear_ticks(ax.xaxis, 3)
        ax.set_title(label, fontsize=6)
        ax.tick_params(labelsize=5)
    fig.suptitle((title or "block spectral densities") + f" ({n} blocks in {len(order)} groups)", fontsize=9)
    fig.supxlabel("eigenvalue / the block's largest |eigenvalue| (median and 10-90% band)", fontsize=7)
    return fig


def plot_block_density_grid(names, grids, densities, **kw) -> bytes:
    """PNG bytes of :func:`draw_block_density_grid`."""
    return png_bytes(draw_block_density_grid(names, grids, densities, **kw), dpi=80)


def draw_full_density(grid: np.ndarray, values: np.ndarray, *, top: Sequence[float] = (),
                      bottom: Sequence[float] = (), title: str = ""):  # fmt: skip
    """The full-model SLQ density (log y) with the Lanczos top/bottom eigenvalues as vertical lines; the
    legend sits outside the axes."""
    plt = pyplot()
    g, d = np.asarray(grid, dtype=float), np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(7.4, 3.6), layout="constrained")
    floor = max(float(d.max()) * 1e-8, 1e-300) if d.size else 1e-300
    ax.plot(g, np.maximum(d, floor), color="#4c72b0", lw=1.2, label="SLQ density")
    for i, x in enumerate(top):
        ax.axvline(x, color="#c44e52", ls="--", lw=0.9, label="top eigenvalues (Lanczos)" if i == 0 else None)
    for i, x in enumerate(bottom):
        ax.axvline(
            x, color="#55a868", ls=":", lw=0.9, label="bottom eigenvalues (Lanczos)" if i == 0 else None
        )
    ax.set_yscale("log")
    if d.size:
        log_ticks(ax.yaxis, floor, max(float(d.max()), floor * 10), max_ticks=6)
    linear_ticks(ax.xaxis, 6)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or "full-model Hessian spectral density", fontsize=9)
    fig.legend(fontsize=7, loc="outside right upper", frameon=False)
    return fig


def plot_full_density(grid, values, **kw) -> bytes:
    """PNG bytes of :func:`draw_full_density`."""
    return png_bytes(draw_full_density(grid, values, **kw))
