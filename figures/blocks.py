"""Block curvature scales against depth: |block lambda_max| and |block trace| per layer on log axes, one
marker series per group (hollow = negative value), flat blocks as crosses on the floor."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from hessian_spectra.figures._mpl import log_ticks, pyplot, short_number
from hessian_spectra.figures._png import png_bytes

__all__ = ["depth_positions", "draw_block_scales", "plot_block_scales"]


def depth_positions(blocks: Sequence[Mapping[str, Any]]) -> list[float]:
    """x position of each block: its layer index; blocks without one sit at -1 when they come before
    the first layered block (embeddings) and at last layer + 1 after it (final norm, head)."""
    layers = [b.get("layer") for b in blocks]
    known = [i for i, v in enumerate(layers) if v is not None]
    if not known:
        return [float(i) for i in range(len(blocks))]
    first, top = known[0], max(layers[i] for i in known)
    return [float(v) if v is not None else (-1.0 if i < first else top + 1.0) for i, v in enumerate(layers)]


def draw_block_scales(blocks: Sequence[Mapping[str, Any]], *, flat: Collection[str] = (), title: str = ""):
    """Two panels (|lambda_max|, |trace|; log y) against depth. Filled markers: positive values; hollow:
    negative; crosses on the floor: flat blocks (zero curvature). The legend sits outside the axes."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plt = pyplot()
    xs = np.asarray(depth_positions(blocks))
    fig, axes = plt.subplots(2, 1, figsize=(7.6, 5.4), sharex=True, layout="constrained")
    groups = list(dict.fromkeys(str(b.get("group", "other")) for b in blocks))
    colors = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(blocks))  # blocks of one layer stay visible
    is_flat = np.array([b.get("name") in flat for b in blocks], dtype=bool)
    for ax, key, label in (
        (axes[0], "lambda_max", "|block lambda_max|"),
        (axes[1], "trace", "|block trace|"),
    ):
        vals = np.array([np.nan if b.get(key) is None else float(b[key]) for b in blocks])
        ok = np.isfinite(vals) & (vals != 0) & ~is_flat
        mags = np.abs(vals[ok])
        lo, hi = (float(mags.min()), float(mags.max())) if mags.size else (1e-3, 1.0)
        lo, hi = (lo / 3, hi * 3) if hi > lo else (lo / 10, hi * 10)
        for gi, g in enumerate(groups):
            mine = ok & np.array([str(b.get("group", "other")) == g for b in blocks])
            color = colors(gi % colors.N)
            for sign, face in ((1, color), (-1, "none")):
                sel = mine & (np.sign(vals) == sign)
                if sel.any():
                    ax.plot(
                        xs[sel] + jitter[sel], np.abs(vals[sel]), "o", ms=4, mfc=face, mec=color, ls="none"
                    )
        if is_flat.any():
            ax.plot(
                xs[is_flat] + jitter[is_flat],
                np.full(is_flat.sum(), lo),
                "x",
                color="#c44e52",
                ms=6,
                ls="none",
            )
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.5, hi)
        log_ticks(ax.yaxis, lo / 1.5, hi, max_ticks=6)
        ax.set_ylabel(label, fontsize=8)
    if len(xs):
        axes[1].set_xlim(float(xs.min()) - 0.5, float(xs.max()) + 0.5)
    axes[1].xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    axes[1].xaxis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
    axes[1].set_xlabel("layer index (-1: before the first layer; last + 1: after the last)", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="none", ms=5, color=colors(i % colors.N), label=g)
               for i, g in enumerate(groups)]  # fmt: skip
    handles.append(
        Line2D([], [], marker="o", ls="none", ms=5, mfc="none", mec="#444", label="hollow: negative value")
    )
    if is_flat.any():
        handles.append(
            Line2D([], [], marker="x", ls="none", ms=6, color="#c44e52", label="flat (zero curvature)")
        )
    fig.legend(handles=handles, fontsize=6 if len(handles) > 12 else 7, loc="outside right upper", frameon=False,
               ncols=max(1, math.ceil(len(handles) / 28)), title="block group", title_fontsize=7)  # fmt: skip
    fig.suptitle(title or "block curvature scales vs depth", fontsize=9)
    return fig


def plot_block_scales(blocks: Sequence[Mapping[str, Any]], **kw) -> bytes:
    """PNG bytes of :func:`draw_block_scales`."""
    return png_bytes(draw_block_scales(blocks, **kw))
