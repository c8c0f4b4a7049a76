"""Block spectral densities under a convention: node positions on the convention's axis, per-block kernel
widths, and kernel-smoothed densities on one common grid (point-sampled, or exact bin masses on a sparse
common partition). Design notes: spectra/docs/heterogeneity.md."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum
from hessian_spectra.analyses.heterogeneity.conventions import SCALES_KEPT, JSConvention, get_convention

__all__ = ["block_densities", "kernel_widths"]


def _transform(spectra: Sequence[BlockSpectrum], conv: JSConvention) -> list[np.ndarray]:
    """Node positions on the convention's axis, one array per block."""
    xs = []
    model = float(np.median([s.spectral_radius for s in spectra])) if conv.scale == "model" else 1.0
    for s in spectra:
        x = s.nodes
        if conv.scale == "own":
            r = s.spectral_radius
            x = x / r if r > 0 else np.zeros_like(x)
        elif conv.scale == "model" and model > 0:
            x = x / model
        xs.append(x)
    if conv.axis == "symlog":
        top = max(float(np.max(np.abs(x))) for x in xs)
        tau = conv.log_floor * top if top > 0 else 1.0
        xs = [np.sign(x) * np.log10(1.0 + np.abs(x) / tau) for x in xs]
    return xs


def block_densities(
    spectra: Sequence[BlockSpectrum], convention: JSConvention | str = SCALES_KEPT
) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, densities)``: each block's kernel-smoothed density on the convention's common grid, as a
    probability vector over the grid's bins (rows sum to one).

    ``pooled`` kernel: ``grid`` is a uniform grid of ``grid_points`` points and each row holds the
    point-sampled density, normalised. ``block``/``absolute`` kernels: ``grid`` holds the centre of each bin
    of one common partition of the axis (not uniform: fine where a narrow kernel has mass, one wide bin
    across empty stretches; the two open outer bins at their finite edge) and each row the exact kernel
    mass in each bin.
    """
    convention = get_convention(convention)
    if not spectra:
        raise ValueError("no block spectra given")
    xs = _transform(spectra, convention)
    weights = [s.weights for s in spectra]
    if convention.kernel != "pooled":
        return _binned_densities(xs, weights, convention)
    lo, hi = _pooled_range(xs, convention)
    grid = np.linspace(lo, hi, convention.grid_points)
    sigma = convention.sigma_fraction * (hi - lo)
    dens = np.empty((len(xs), grid.size))
    for b, (x, w) in enumerate(zip(xs, weights, strict=True)):
        dens[b] = _smooth(grid, x, w, sigma)
    return grid, dens


def _pooled_range(xs: Sequence[np.ndarray], conv: JSConvention) -> tuple[float, float]:
    """The common grid's ends: the pooled node range ([-1, 1] at least for shape-only), padded by
    ``padding_abs`` or by ``padding`` x the span."""
    lo = min(float(x.min()) for x in xs)
    hi = max(float(x.max()) for x in xs)
    if conv.scale == "own" and conv.axis == "linear":
        lo, hi = min(lo, -1.0), max(hi, 1.0)
    if conv.padding_abs is not None:
        return lo - conv.padding_abs, hi + conv.padding_abs
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - conv.padding * span, hi + conv.padding * span


def kernel_widths(spectra: Sequence[BlockSpectrum], convention: JSConvention | str) -> np.ndarray:
    """The Gaussian kernel sigma of each block on the convention's axis (one value per block)."""
    convention = get_convention(convention)
    return _kernel_widths(_transform(spectra, convention), convention)


def _kernel_widths(xs: Sequence[np.ndarray], conv: JSConvention) -> np.ndarray:
    """Per-block sigma: absolute, ``sigma_fraction`` x the pooled padded span, or x the block's own range
    (floored at ``log_floor`` x the largest |node| so a block of equal eigenvalues still gets a kernel)."""
    if conv.kernel == "absolute":
        return np.full(len(xs), float(conv.sigma_abs))
    if conv.kernel == "pooled":
        lo, hi = _pooled_range(xs, conv)
        return np.full(len(xs), conv.sigma_fraction * (hi - lo))
    top = max(float(np.max(np.abs(x))) for x in xs)
    floor = conv.log_floor * top if top > 0 else 1.0
    return np.array([conv.sigma_fraction * max(float(x.max() - x.min()), floor) for x in xs])


def _binned_densities(
    xs: Sequence[np.ndarray], ws: Sequence[np.ndarray], conv: JSConvention
) -> tuple[np.ndarray, np.ndarray]:
    """Exact bin masses of every block on one common partition laid only where some block has mass.

    Block b has a lattice of bin edges of step h_b <= ``bin_width`` x sigma_b and keeps the edges within
    ``window`` sigma_b of its nodes. ``absolute``: one lattice for all blocks, the uniform grid of
    ``grid_points`` points over the pooled range +- ``padding_abs`` refined to that step, its bins edged
    at the midpoints with the two end bins open, as a dense grid would have them; the partition is the
    union of the kept edges. ``block``: edges at multiples of h_b = ``bin_width`` x sigma_b (so multiplying
    every eigenvalue by c scales the partition by c); on each stretch of the axis the partition takes the
    edges of the finest lattice among the blocks with mass there (so it is at least as fine as every
    block's own lattice where that block has mass, without stacking all blocks' edges), plus the window
    ends. Stretches where no block has mass are one bin each, and two open bins close the ends. Mass beyond
    ``window`` sigma of a node (< 1e-15 at 8 sigma) is dropped and each row renormalised.
    """
    sigmas = _kernel_widths(xs, conv)
    if conv.kernel == "absolute":
        lo, hi = _pooled_range(xs, conv)
        sigma = float(sigmas[0])
        n = max(conv.grid_points, int(math.ceil((hi - lo) / (conv.bin_width * sigma))) + 1)
        step = (hi - lo) / (n - 1)
        anchor = lo - 0.5 * step  # edge j lies between lattice points j - 1 and j; finite edges j = 1..n-1
        windows = [_edge_window(x, conv.window * sigma, anchor, step, conv) for x in xs]
        j_lo = np.clip(np.concatenate([w[0] for w in windows]), 1, n - 1)
        j_hi = np.clip(np.concatenate([w[1] for w in windows]), 1, n - 1)
        starts, ends = _merge_intervals(j_lo, j_hi)
        inner = anchor + _integer_ranges(starts, ends).astype(np.float64) * step
    else:
        steps = conv.bin_width * sigmas
        lows, highs, hs = [], [], []
        for x, sigma, h in zip(xs, sigmas, steps, strict=True):
            starts, ends = _merge_intervals(*_edge_window(x, conv.window * sigma, 0.0, float(h), conv))
            lows.append(starts * h)
            highs.append(ends * h)
            hs.append(np.full(starts.size, h))
        ivl_lo, ivl_hi, ivl_h = np.concatenate(lows), np.concatenate(highs), np.concatenate(hs)
        breaks = np.unique(np.concatenate([ivl_lo, ivl_hi]))
        first, last = np.searchsorted(breaks, ivl_lo), np.searchsorted(breaks, ivl_hi)
        finest = np.full(breaks.size - 1, np.inf)  # finest step among the windows covering each stretch
        np.minimum.at(finest, _integer_ranges(first, last - 1), np.repeat(ivl_h, last - first))
        covered = np.isfinite(finest)
        a, b, h = breaks[:-1][covered], breaks[1:][covered], finest[covered]
        j0, j1 = np.floor(a / h).astype(np.int64) + 1, np.ceil(b / h).astype(np.int64) - 1
        counts = np.maximum(j1 - j0 + 1, 0)
        interior = _integer_ranges(j0, j1).astype(np.float64) * np.repeat(h, counts)
        inner = np.unique(np.concatenate([breaks, interior]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    dens = np.empty((len(xs), edges.size - 1))
    for i, (x, w, sigma) in enumerate(zip(xs, ws, sigmas, strict=True)):
        dens[i] = _bin_masses(edges, x, w, float(sigma), conv.window)
    if inner.size:
        grid = np.concatenate([[inner[0]], 0.5 * (inner[:-1] + inner[1:]), [inner[-1]]])
    else:
        grid = np.zeros(1)
    return grid, dens


def _edge_window(
    x: np.ndarray, reach: float, anchor: float, step: float, conv: JSConvention
) -> tuple[np.ndarray, np.ndarray]:
    """Per node, the indices of the lattice edges ``anchor + j * step`` just outside [x - reach, x + reach]."""
    j_lo, j_hi = np.floor((x - reach - anchor) / step), np.ceil((x + reach - anchor) / step)
    if max(np.abs(j_lo).max(), np.abs(j_hi).max()) > 2.0**52:
        raise ValueError(
            f"convention {conv.name!r}: kernel sigma {reach / conv.window:.3g} is below float64 resolution at "
            f"eigenvalues up to {float(np.abs(x).max()):.3g}"
        )
    return j_lo.astype(np.int64), j_hi.astype(np.int64)


def _merge_intervals(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of the integer intervals [lo_i, hi_i]: sorted disjoint (starts, ends), overlapping or touching
    intervals merged."""
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], np.maximum.accumulate(hi[order])
    new = np.flatnonzero(lo[1:] > hi[:-1]) + 1
    return lo[np.concatenate([[0], new])], hi[np.concatenate([new - 1, [lo.size - 1]])]


def _integer_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """All integers of [starts_i, ends_i] (empty where ends_i < starts_i), concatenated in order."""
    counts = np.maximum(ends - starts + 1, 0)
    offsets = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(offsets - starts, counts)


def _bin_masses(edges: np.ndarray, x: np.ndarray, w: np.ndarray, sigma: float, window: float) -> np.ndarray:
    """Mass of the weighted Gaussian mixture in each bin [edges[j], edges[j+1]] (edges sorted, first -inf,
    last +inf), from the normal CDF at the edges within ``window`` sigma of each node (each edge's smaller
    tail Phi(-|z|), so far bins keep their digits); the row is renormalised to sum to one."""
    from scipy.special import ndtr

    nbins = edges.size - 1
    first = np.clip(np.searchsorted(edges, x - window * sigma, side="right") - 1, 0, nbins - 1)
    last = np.clip(np.searchsorted(edges, x + window * sigma, side="right") - 1, 0, nbins - 1)
    counts = last - first + 2  # edges of bins first..last
    out = np.zeros(nbins)
    ends = np.cumsum(counts)
    i = 0
    while i < x.size:  # chunks of about 250k (node, edge) pairs
        done = ends[i - 1] if i else 0
        j = max(i + 1, int(np.searchsorted(ends, done + 250_000, side="right")))
        c = counts[i:j]
        starts = np.cumsum(c) - c
        idx = np.arange(int(c.sum())) - np.repeat(starts, c) + np.repeat(first[i:j], c)
        z = (edges[idx] - np.repeat(x[i:j], c)) / sigma
        tail = ndtr(-np.abs(z))
        lower = np.ones(idx.size, dtype=bool)
        lower[starts + c - 1] = False  # a node's last edge starts no bin
        za, zb, ta, tb = z[:-1][lower[:-1]], z[1:][lower[:-1]], tail[:-1][lower[:-1]], tail[1:][lower[:-1]]
        mass = np.where(za >= 0, ta - tb, np.where(zb <= 0, tb - ta, 1.0 - ta - tb))
        out += np.bincount(idx[:-1][lower[:-1]], np.repeat(w[i:j], c - 1) * mass, minlength=nbins)
        i = j
    total = out.sum()
    return out / total if total > 0 else np.full(nbins, 1.0 / nbins)


def _smooth(grid: np.ndarray, x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of weighted Gaussians at ``x`` evaluated on ``grid`` (SLQ's kernel), as a probability vector."""
    from hessian_spectra.krylov.density import kernel_mixture

    out = kernel_mixture(grid, x, w, sigma, "gaussian")
    total = out.sum()
    return out / total if total > 0 else np.full(grid.size, 1.0 / grid.size)
