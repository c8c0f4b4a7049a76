"""Pairwise Jensen-Shannon distances between block spectra as a heatmap: labelled block by block up to a
size; beyond it the group-by-group means (labelled) next to the full matrix ordered by group (group
boundaries drawn, no per-block labels; the numbers are in report.json)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hessian_spectra.figures._mpl import pyplot, shorten
from hessian_spectra.figures._png import png_bytes

__all__ = ["MAX_LABELLED", "draw_js_heatmap", "plot_js_heatmap", "group_means"]

#: Up to this many blocks are labelled one by one; beyond, the figure aggregates by group.
MAX_LABELLED = 40
#: Tick label font sizes are chosen so labels fit their cell; never below this (thinned instead).
MIN_FONT = 4.5


def group_means(matrix: np.ndarray, groups: Sequence[str]) -> tuple[list[str], np.ndarray, list[int]]:
    """Groups (first-seen order), the mean JS between the blocks of each pair of groups (off-diagonal
    pairs only within a group), and the number of blocks per group."""
    order = list(dict.fromkeys(groups))
    idx = {g: [i for i, gi in enumerate(groups) if gi == g] for g in order}
    out = np.zeros((len(order), len(order)))
    for a, ga in enumerate(order):
        for b, gb in enumerate(order):
            block = matrix[np.ix_(idx[ga], idx[gb])]
            if ga == gb:
                n = len(idx[ga])
                out[a, b] = (block.sum() - np.trace(block)) / (n * (n - 1)) if n > 1 else 0.0
            else:
                out[a, b] = block.mean()
    return order, out, [len(idx[g]) for g in order]


def _labels(ax, labels: Sequence[str], size_in: float) -> None:
    """Tick labels on both axes at a font that fits one cell; every k-th label when they cannot fit."""
    n = len(labels)
    font = min(8.0, 0.8 * size_in * 72.0 / max(n, 1))
    step = 1
    while font < MIN_FONT:
        step += 1
        font = min(8.0, 0.8 * size_in * 72.0 * step / max(n, 1))
    pos = list(range(0, n, step))
    text = [shorten(labels[i], 40) for i in pos]
    ax.set_xticks(pos, labels=text, rotation=90, fontsize=font)
    ax.set_yticks(pos, labels=text, fontsize=font)


def draw_js_heatmap(names: Sequence[str], matrix: np.ndarray, *, groups: Sequence[str] | None = None,
                    title: str = "", max_labelled: int = MAX_LABELLED):  # fmt: skip
    """The heatmap figure (values in [0, 1], viridis)."""
    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    n = len(names)
    if n <= max_labelled or groups is None:
        side = min(11.0, max(4.0, 0.22 * n + 2.0))
        fig, ax = plt.subplots(figsize=(side + 2.6, side + 1.6), layout="constrained")
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        _labels(ax, list(names), side)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="JS distance")
        ax.set_title(title or "JS distance between block spectra", fontsize=9)
        return fig
    order, means, counts = group_means(m, groups)
    perm = np.argsort([order.index(g) for g in groups], kind="stable")
    side = min(9.0, max(4.0, 0.25 * len(order) + 2.5))
    fig, (ax_g, ax_f) = plt.subplots(1, 2, figsize=(2 * side + 3.5, side + 2.2), layout="constrained")
    ax_g.imshow(means, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    _labels(ax_g, [f"{g} ({c})" for g, c in zip(order, counts, strict=True)], side)
    ax_g.set_title(f"mean JS between block groups ({len(order)} groups)", fontsize=8)
    im = ax_f.imshow(m[np.ix_(perm, perm)], vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    edges = np.cumsum(counts)[:-1] - 0.5
    for e in edges:
        ax_f.axhline(e, color="white", lw=0.4)
        ax_f.axvline(e, color="white", lw=0.4)
    ax_f.set_xticks([])
    ax_f.set_yticks([])
    ax_f.set_xlabel(
        f"all {n} blocks, ordered by group (same order as left; values in report.json)", fontsize=7
    )
    ax_f.set_title("every block pair", fontsize=8)
    fig.colorbar(im, ax=ax_f, fraction=0.046, pad=0.02, label="JS distance")
    fig.suptitle(title or "JS distance between block spectra", fontsize=9)
    return fig


def plot_js_heatmap(names: Sequence[str], matrix: np.ndarray, **kw) -> bytes:
    """PNG bytes of :func:`draw_js_heatmap`."""
    return png_bytes(draw_js_heatmap(names, matrix, **kw))
