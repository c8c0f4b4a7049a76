"""Block curvature scales against depth: block lambda_max and trace per layer, one line per group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from hessian_spectra.figures._mpl import pyplot
from hessian_spectra.figures._png import png_bytes


def depth_positions(blocks: Sequence[Mapping[str, Any]]) -> list[float]:
    """x position of each block: its layer index; blocks without one sit at -1 when they come before
    the first layered block (embeddings) and at last layer + 1 after it (final norm, head)."""
    layers = [b.get("layer") for b in blocks]
    known = [i for i, v in enumerate(layers) if v is not None]
    if not known:
        return [float(i) for i in range(len(blocks))]
    first, top = known[0], max(layers[i] for i in known)
    return [float(v) if v is not None else (-1.0 if i < first else top + 1.0) for i, v in enumerate(layers)]


def plot_block_scales(blocks: Sequence[Mapping[str, Any]], *, title: str = "") -> bytes:
    """Two panels (block lambda_max, block trace; symlog y) vs depth, one marker series per group."""
    plt = pyplot()
    xs = depth_positions(blocks)
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
    groups = sorted({str(b.get("group", "other")) for b in blocks})
    rng = np.random.default_rng(0)  # a small fixed horizontal jitter so blocks of one layer stay visible
    jitter = rng.uniform(-0.15, 0.15, len(blocks))
    for ax, key, label in ((axes[0], "lambda_max", "block lambda_max"), (axes[1], "trace", "block trace")):
        vals = [b.get(key) for b in blocks]
        finite = [abs(v) for v in vals if v is not None and np.isfinite(v) and v != 0]
        for g in groups:
            pts = [(x + j, v) for x, j, v, b in zip(xs, jitter, vals, blocks, strict=True)
                   if str(b.get("group", "other")) == g and v is not None and np.isfinite(v)]  # fmt: skip
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=4, label=g)
        if finite:
            ax.set_yscale("symlog", linthresh=max(min(finite), 1e-12))
        ax.set_ylabel(label, fontsize=8)
    axes[1].set_xlabel("layer index (-1: before the first layer; last + 1: after the last)")
    axes[0].legend(fontsize=7, ncol=3)
    fig.suptitle(title or "block curvature scales vs depth", fontsize=9)
    return png_bytes(fig)
