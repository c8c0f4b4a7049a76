"""Block heterogeneity of the Hessian: how different the spectra of the diagonal blocks are.

Input: one :class:`BlockSpectrum` per block (exact eigenvalues, or SLQ nodes and weights). Output: a
:class:`HeterogeneityReport` with, for each named :class:`JSConvention`, the pairwise Jensen-Shannon
distance matrix between the block spectral densities; the spread of block curvature scales (block
lambda_max and traces); a one-line verdict; and which block groups (Q/K, V, attention output, MLP,
embeddings, norms, ...) drive the heterogeneity.

The JS value depends on how densities are built, so every number is tagged with its convention
(:data:`CONVENTIONS`, by name; :data:`DEFAULT_CONVENTIONS` = scales-kept, shape-only):

* ``scales-kept`` (the default): one common LINEAR eigenvalue axis, negative eigenvalues in place; each
  block b smoothed with its OWN Gaussian kernel, sigma_b = 1% of its own eigenvalue range
  (lambda_max - lambda_min of its nodes, at least 1e-6 x the largest |eigenvalue| of all blocks). Every
  block is resolved at its own scale, so a block 1000x below the largest is a narrow density at its own
  place, not a spike merged with every other small block; multiplying the loss by a constant scales
  every node and every sigma_b alike, so JS does not change. Densities are exact kernel masses in the
  bins of one common partition (below).
* ``shape-only``: each block divided by its own spectral radius max|lambda| (= lambda_max unless the
  negative side dominates), so every block lives in [-1, 1]; linear grid on [-1.05, 1.05]; sigma = 1%
  of the span. Only the shape of the spectrum counts.
* ``scales-kept-log``: common SYMLOG axis x = sign(t) log10(1 + |t|/tau), tau = 1e-6 x the largest
  |eigenvalue| over all blocks (eigenvalues below tau sit near 0, negatives mirrored); sigma = 1% of the
  span. Scales and shapes both count; blocks at different orders of magnitude are told apart. Its
  resolution is relative to each eigenvalue's own size, finer than block SLQ resolves near zero (below).
* ``scales-kept-relative`` (the ``scales-kept`` of earlier versions; not a default): one common linear
  grid of 2048 points over [min lambda_min, max lambda_max] (5% padding), ONE kernel for all blocks,
  sigma = 1% of that span. Blocks whose scales are far below the largest collapse to one spike at zero
  and look alike, so it does not keep small scales apart.
* ``paper`` (not a default): the "Why Transformers Need Adam" density convention
  (zyushun/hessian-spectrum): ABSOLUTE kernel sigma^2 = 1e-5 (sigma = 0.00316 in eigenvalue units,
  whatever the blocks' scales) on a lattice of 50,000 points over the pooled range padded by 1.0 on each
  side, refined to step sigma/2 when coarser; one common lattice for all blocks (the paper's grid is per
  block; JS needs a common one). Multiplying the loss by a constant changes its JS.

Bins for the ``block`` and ``absolute`` kernels: each block has a lattice of bin edges of step <= sigma_b/2
(``paper``: the lattice above; ``scales-kept``: multiples of sigma_b/2) and only its edges within
8 sigma_b of one of its nodes are laid. The common partition takes, on each stretch of the axis, the
edges of the finest lattice among the blocks with mass there (``paper``: the one lattice), one bin for
each empty stretch and two open outer bins; every block's mass in every bin is integrated with the
normal CDF, so each density sums to one up to the < 1e-15 of kernel mass beyond 8 sigma, and is resolved
at least as finely as its own lattice. JS is taken on that one common partition. The dense ``paper`` grid of earlier versions had
861,393 points for the tiny GPT of the tests (1.05 s, 94 MiB peak for densities and JS matrix); the sparse
partition has 6,455 bins (0.012 s, 2.7 MiB) and gives the same JS to 1e-14. For ``scales-kept`` a block's
windows cover at most its range + 16 sigma_b, about 230 of its own bins, so the partition grows with the
number of blocks, not with the eigenvalue range (150 blocks x 400 SLQ nodes: 1,919 bins).

Why ``scales-kept`` is the per-block kernel (measured with exact per-tensor Hessian blocks at init of
the tiny GPT, CNN and MLP of tests/test_heterogeneity_models.py, and with block SLQ of the GPT, 24
probes x 64 steps; block lambda_max spreads 5,336x / 160x / 17x):

=====================  ====================  ============  ===============  ===============
convention             mean JS GPT/CNN/MLP   loss x c      SLQ vs exact     GPT > CNN, MLP
=====================  ====================  ============  ===============  ===============
scales-kept (block)    0.611 / 0.551 / 0.550 invariant     0.013            yes
scales-kept-log        0.561 / 0.393 / 0.538 invariant     0.20             yes
scales-kept-relative   0.155 / 0.093 / 0.339 invariant     0.004            no (MLP > GPT)
paper (absolute)       0.634 / 0.094 / 0.361 up to 0.7     0.083            yes
shape-only             0.276 / 0.243 / 0.468 invariant     0.027            no
=====================  ====================  ============  ===============  ===============

("loss x c": max change of a pairwise JS when the eigenvalues are multiplied by c in {1e-3, 0.1, 7,
1e3}: <= 6e-6 for scales-kept, from window ends that round to the next lattice edge; "SLQ vs exact":
max over block pairs of |JS_SLQ - JS_exact|; the issue's tolerance is 0.03.) A kernel must be wider than
what the estimator resolves: Lanczos/Gauss quadrature on a block resolves eigenvalues to a fraction of
that block's own spectral range, which is what sigma_b follows; the log axis asks for a resolution
relative to each eigenvalue (near zero, a fraction of tau) that 64 Lanczos steps do not give on blocks
with interior near-zero eigenvalues (GPT wte: 18% of exact eigenvalues below tau, < 0.1% of SLQ mass).
The absolute kernel is unit-dependent and resolves large blocks into separate spikes. A common kernel
chosen per pair (1% of the pair's range) keeps scales and is invariant too, but orders MLP 0.44 above
GPT 0.33 and gives no single density per block.

Cost of the per-block kernel: each block's smoothing follows its own range, an extreme statistic. Two
blocks with the same eigenvalues except one outlier 100x larger in one of them are smoothed 100x
differently, and their JS is large (0.87 for 200 zeros + 50 eigenvalues in [0.5, 1], against 0.045
under the common-kernel conventions); likewise blocks that share a large null space (the CNN at init:
92% of the conv eigenvalues are 0) differ through the widths of their spikes at zero. Read scales-kept
as "how different are the blocks, each seen at its own scale", next to scales-kept-relative and
shape-only.

JS distance = sqrt(JS divergence) with log base 2, so it lies in [0, 1] (0 identical, 1 disjoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from hessian_spectra.io import json_safe

__all__ = [
    "BlockSpectrum",
    "JSConvention",
    "SCALES_KEPT",
    "SCALES_KEPT_RELATIVE",
    "SHAPE_ONLY",
    "SCALES_KEPT_LOG",
    "PAPER",
    "DEFAULT_CONVENTIONS",
    "DRIVERS_CONVENTION",
    "CONVENTIONS",
    "get_convention",
    "kernel_widths",
    "HeterogeneityReport",
    "block_group",
    "block_densities",
    "js_distance",
    "js_matrix",
    "mean_offdiagonal",
    "scale_spread",
    "group_drivers",
    "analyze_heterogeneity",
    "spectra_from_hessian",
]

#: Groups the drivers analysis reports (from :func:`hessian_spectra.weights.roles.tensor_role` and the block kind).
GROUPS = ("qk", "v", "attn_out", "mlp", "embedding", "norm", "bias", "conv", "output", "other")


@dataclass(frozen=True, eq=False)
class BlockSpectrum:
    """The spectrum of one diagonal Hessian block as a discrete measure: ``nodes`` with ``weights``
    summing to one (exact: eigenvalues with weight 1/dim; SLQ: Ritz nodes with probe-averaged weights)."""

    name: str
    dim: int
    nodes: np.ndarray
    weights: np.ndarray
    source: Literal["exact", "slq"]
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float | None = None
    group: str = "other"
    layer: int | None = None

    @classmethod
    def exact(
        cls, name: str, eigenvalues: Any, *, group: str | None = None, layer: int | None = None
    ) -> BlockSpectrum:
        """From all eigenvalues of the block (an exact oracle, or a tiny block done densely)."""
        ev = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        if ev.size == 0 or not np.all(np.isfinite(ev)):
            raise ValueError(f"block {name!r}: eigenvalues must be finite and non-empty")
        return cls(
            name=name, dim=int(ev.size), nodes=ev, weights=np.full(ev.size, 1.0 / ev.size), source="exact",
            lambda_max=float(ev[-1]), lambda_min=float(ev[0]), trace=float(ev.sum()), trace_stderr=0.0,
            group=group or block_group(name), layer=layer if layer is not None else block_layer(name),
        )  # fmt: skip

    @classmethod
    def from_slq(
        cls,
        name: str,
        dim: int,
        nodes: Any,
        weights: Any,
        *,
        trace: float | None = None,
        trace_stderr: float | None = None,
        lambda_max: float | None = None,
        lambda_min: float | None = None,
        group: str | None = None,
        layer: int | None = None,
    ) -> BlockSpectrum:
        """From SLQ nodes/weights of every probe (flattened together; weights renormalised to sum 1).

        ``lambda_max``/``lambda_min`` default to the extreme nodes (the extreme Ritz values, which converge
        first); ``trace`` defaults to dim x sum(w x node).
        """
        x = np.asarray(nodes, dtype=np.float64).ravel()
        w = np.asarray(weights, dtype=np.float64).ravel()
        if x.shape != w.shape or x.size == 0:
            raise ValueError(f"block {name!r}: nodes and weights must be non-empty and of equal size")
        keep = np.isfinite(x) & np.isfinite(w) & (w > 0)
        x, w = x[keep], w[keep]
        if x.size == 0 or w.sum() <= 0:
            raise ValueError(f"block {name!r}: no finite SLQ node with positive weight")
        w = w / w.sum()
        order = np.argsort(x)
        x, w = x[order], w[order]
        return cls(
            name=name, dim=int(dim), nodes=x, weights=w, source="slq",
            lambda_max=float(x[-1] if lambda_max is None else lambda_max),
            lambda_min=float(x[0] if lambda_min is None else lambda_min),
            trace=float(dim * np.dot(w, x) if trace is None else trace), trace_stderr=trace_stderr,
            group=group or block_group(name), layer=layer if layer is not None else block_layer(name),
        )  # fmt: skip

    @property
    def spectral_radius(self) -> float:
        """max |lambda| over the block (the shape-only convention divides by it)."""
        return float(max(abs(self.lambda_max), abs(self.lambda_min)))

    def to_dict(self) -> dict[str, Any]:
        """Summary without the nodes (those can be large); JSON-safe."""
        return json_safe(
            {
                "name": self.name, "dim": self.dim, "source": self.source, "group": self.group,
                "layer": self.layer, "lambda_max": self.lambda_max, "lambda_min": self.lambda_min,
                "trace": self.trace, "trace_stderr": self.trace_stderr, "num_nodes": int(self.nodes.size),
            }
        )  # fmt: skip


def block_layer(name: str) -> int | None:
    """The first integer component of a dotted block name (``h.3.attn.q`` -> 3), if any."""
    for part in name.replace("/", ".").replace("[", ".").split("."):
        if part.isdigit():
            return int(part)
    return None


def block_group(name: str) -> str:
    """The block group (:data:`GROUPS`) a block name belongs to, via :func:`hessian_spectra.weights.roles.tensor_role`.

    Head/part suffixes written by :mod:`hessian_spectra.curvature.block_builders` (``...q_proj.weight[head 0]``, ``:q``) are honoured:
    a Q or K part of a fused QKV tensor is ``qk``, a V part ``v``.
    """
    from hessian_spectra.weights.roles import tensor_role

    base = name.split("[")[0].split(":")[0].split("#")[0].split("@")[0].strip()
    lowered = name.lower()
    role = tensor_role(base)
    if role == "qkv":
        for tag, grp in ((":q", "qk"), (":k", "qk"), (":v", "v"), ("part q", "qk"), ("part k", "qk")):
            if tag in lowered:
                return grp
        return "qk"
    return {
        "q": "qk", "k": "qk", "v": "v", "attn_out": "attn_out", "mlp_gate": "mlp", "mlp_up": "mlp",
        "mlp_down": "mlp", "mlp_in": "mlp", "mlp_out": "mlp", "embedding": "embedding",
        "position_embedding": "embedding", "lm_head": "output", "classifier": "output", "norm": "norm",
        "bias": "bias", "conv": "conv",
    }.get(role, "other")  # fmt: skip


@dataclass(frozen=True)
class JSConvention:
    """How block densities are built before the JS distance is taken (see the module docstring).

    ``kernel`` sets the Gaussian kernel width: ``pooled`` = ``sigma_fraction`` x the span of the common
    grid (one width for all blocks, point-sampled on ``grid_points`` points); ``block`` = ``sigma_fraction``
    x each block's own eigenvalue range (one width per block); ``absolute`` = ``sigma_abs`` in the units
    of the axis. The ``block`` and ``absolute`` kernels are integrated exactly into bins (normal CDF) that
    are laid only where some block has mass (``window`` sigmas either side of every node).
    """

    name: str
    scale: Literal["common", "own"]
    axis: Literal["linear", "symlog"]
    sigma_fraction: float | None = 0.01
    grid_points: int = 2048
    padding: float = 0.05
    log_floor: float = 1e-6
    sigma_abs: float | None = None
    padding_abs: float | None = None
    kernel: Literal["pooled", "block", "absolute"] = "pooled"
    window: float = 8.0
    bin_width: float = 0.5

    def __post_init__(self) -> None:
        if self.kernel not in ("pooled", "block", "absolute"):
            raise ValueError(f"convention {self.name!r}: kernel must be 'pooled', 'block' or 'absolute'")
        if (self.sigma_abs is not None) != (self.kernel == "absolute") or (self.sigma_fraction is None) != (
            self.kernel == "absolute"
        ):
            raise ValueError(
                f"convention {self.name!r}: kernel 'absolute' takes sigma_abs only, the others sigma_fraction only"
            )
        sigma = self.sigma_abs if self.sigma_abs is not None else self.sigma_fraction
        if not sigma > 0 or self.grid_points < 2 or not self.window >= 6.0 or not 0 < self.bin_width <= 1:
            raise ValueError(
                f"convention {self.name!r}: need sigma > 0, grid_points >= 2, window >= 6 and 0 < bin_width <= 1"
            )

    def describe(self) -> str:
        """One sentence naming the grid, kernel width, axis and the handling of negative eigenvalues."""
        scale = (
            "one common grid for all blocks (curvature scales kept)"
            if self.scale == "common"
            else "each block divided by its own spectral radius max|lambda| (shape only)"
        )
        if self.axis == "linear":
            axis = "linear eigenvalue axis, negative eigenvalues kept in place"
        else:
            axis = (
                f"symlog axis x = sign(t) log10(1 + |t|/tau), tau = {self.log_floor:g} x the largest |eigenvalue|"
                " (negative eigenvalues mirrored, |t| < tau near 0)"
            )
        pad = (
            f"{self.padding_abs:g} (absolute)" if self.padding_abs is not None else f"{100 * self.padding:g}%"
        )
        tail = "JS distance = sqrt(JS divergence), log base 2, in [0, 1]"
        exact = (
            f"each bin's kernel mass integrated exactly with the normal CDF, bins laid only within "
            f"{self.window:g} sigma of some node, so densities sum to one"
        )
        if self.kernel == "pooled":
            merge = ", so blocks far below the largest merge into one spike" if self.scale == "common" else ""
            return (
                f"{scale}; {axis}; {self.grid_points}-point grid over the pooled range padded by {pad}; "
                f"Gaussian kernel sigma = {100 * self.sigma_fraction:g}% of the grid span (one width for all "
                f"blocks{merge}); {tail}"
            )
        if self.kernel == "block":
            return (
                f"{scale}; {axis}; per-block Gaussian kernel sigma_b = {100 * self.sigma_fraction:g}% of block "
                f"b's own eigenvalue range (at least {self.log_floor:g} x the largest |eigenvalue|), so every "
                f"block is resolved at its own scale and JS is unchanged when the loss is multiplied by a "
                f"constant; one common grid of bins of width <= {self.bin_width:g} sigma_b where block b has mass; "
                f"{exact}; {tail}"
            )
        return (
            f"{scale}; {axis}; lattice of {self.grid_points} points over the pooled range padded by {pad} on "
            f"each side, refined to step {self.bin_width:g} sigma when coarser; absolute Gaussian kernel sigma = "
            f"{self.sigma_abs:.4g} (sigma^2 = {self.sigma_abs**2:.3g}) in eigenvalue units (JS changes when "
            f"the loss is multiplied by a constant); {exact}; {tail}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "scale": self.scale, "axis": self.axis, "kernel": self.kernel,
            "sigma_fraction": self.sigma_fraction, "sigma_abs": self.sigma_abs, "grid_points": self.grid_points,
            "padding": self.padding, "padding_abs": self.padding_abs, "window": self.window, "bin_width": self.bin_width,
            "log_floor": self.log_floor, "description": self.describe(),
        }  # fmt: skip


#: Scales kept, each block smoothed at 1% of its own eigenvalue range (the default; module docstring).
SCALES_KEPT = JSConvention("scales-kept", scale="common", axis="linear", kernel="block")
#: Scales kept, one kernel of 1% of the pooled span for all blocks (the earlier ``scales-kept``).
SCALES_KEPT_RELATIVE = JSConvention("scales-kept-relative", scale="common", axis="linear")
SHAPE_ONLY = JSConvention("shape-only", scale="own", axis="linear")
SCALES_KEPT_LOG = JSConvention("scales-kept-log", scale="common", axis="symlog")
#: The "Why Transformers Need Adam" convention: absolute sigma^2 = 1e-5, 50,000 points, +-1 padding.
PAPER = JSConvention(
    "paper", scale="common", axis="linear", kernel="absolute", sigma_fraction=None, sigma_abs=math.sqrt(1e-5),
    grid_points=50_000, padding_abs=1.0,
)  # fmt: skip
#: ``scales-kept-log`` is left out of the defaults: its resolution near zero is finer than block SLQ gives
#: (0.20 off the exact JS at 24 probes x 64 steps on the tiny GPT), so it is only for exact spectra.
DEFAULT_CONVENTIONS: tuple[JSConvention, ...] = (SCALES_KEPT, SHAPE_ONLY)
#: The convention the group-drivers table of a report is read under.
DRIVERS_CONVENTION = "scales-kept"
#: Every named convention, by name.
CONVENTIONS: dict[str, JSConvention] = {
    c.name: c for c in (SCALES_KEPT, SHAPE_ONLY, SCALES_KEPT_LOG, SCALES_KEPT_RELATIVE, PAPER)
}


def get_convention(name: str | JSConvention) -> JSConvention:
    """The named convention (:data:`CONVENTIONS`); a :class:`JSConvention` is returned as is."""
    if isinstance(name, JSConvention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown JS convention {name!r}; known: {', '.join(CONVENTIONS)}") from None


def _transform(spectra: Sequence[BlockSpectrum], conv: JSConvention) -> list[np.ndarray]:
    """Node positions on the convention's axis, one array per block."""
    xs = []
    for s in spectra:
        x = s.nodes
        if conv.scale == "own":
            r = s.spectral_radius
            x = x / r if r > 0 else np.zeros_like(x)
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
    from hessian_spectra.krylov.slq import kernel_mixture

    out = kernel_mixture(grid, x, w, sigma, "gaussian")
    total = out.sum()
    return out / total if total > 0 else np.full(grid.size, 1.0 / grid.size)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, log base 2) between probability vectors."""
    return float(
        js_matrix(np.stack([np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)]))[0, 1]
    )


def js_matrix(densities: np.ndarray) -> np.ndarray:
    """Symmetric matrix of pairwise JS distances between the rows of ``densities`` (as :func:`js_distance`,
    one row against all later rows at a time)."""
    from scipy.special import rel_entr

    p = np.asarray(densities, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    n = p.shape[0]
    out = np.zeros((n, n))
    rows = max(1, 2_000_000 // max(1, p.shape[1]))
    for i in range(n - 1):
        for j in range(i + 1, n, rows):
            q = p[j : j + rows]
            m = 0.5 * (p[i] + q)
            kl = np.where(m > 0, rel_entr(p[i], m) + rel_entr(q, m), 0.0)  # m underflows only where p, q ~ 0
            div = 0.5 * kl.sum(1) / math.log(2.0)
            out[i, j : j + rows] = out[j : j + rows, i] = np.sqrt(np.maximum(div, 0.0))
    return out


def mean_offdiagonal(matrix: np.ndarray, index: Sequence[int] | None = None) -> float | None:
    """Mean over pairs i < j (restricted to ``index`` when given); None with fewer than two blocks."""
    m = np.asarray(matrix)
    if index is not None:
        idx = np.asarray(index, dtype=int)
        m = m[np.ix_(idx, idx)]
    n = m.shape[0]
    if n < 2:
        return None
    iu = np.triu_indices(n, 1)
    return float(m[iu].mean())


def scale_spread(spectra: Sequence[BlockSpectrum]) -> dict[str, Any]:
    """Spread of block curvature scales: ratio and decades between the largest and smallest positive
    block lambda_max, the same for |trace|/dim (mean curvature), and the blocks at either end."""

    def spread(values: list[tuple[str, float]]) -> dict[str, Any]:
        pos = [(n, v) for n, v in values if v > 0 and math.isfinite(v)]
        if len(pos) < 2:
            return {
                "ratio": None,
                "decades": None,
                "max_block": None,
                "min_block": None,
                "num_positive": len(pos),
            }
        hi = max(pos, key=lambda t: t[1])
        lo = min(pos, key=lambda t: t[1])
        ratio = hi[1] / lo[1]
        return {
            "ratio": ratio, "decades": math.log10(ratio), "max_block": hi[0], "min_block": lo[0],
            "max": hi[1], "min": lo[1], "num_positive": len(pos),
        }  # fmt: skip

    return {
        "lambda_max": spread([(s.name, s.lambda_max) for s in spectra]),
        "mean_curvature": spread([(s.name, abs(s.trace) / s.dim) for s in spectra]),
        "trace": spread([(s.name, abs(s.trace)) for s in spectra]),
        "note": "ratio = largest / smallest positive value over blocks; mean_curvature = |trace| / dim",
    }


def group_drivers(spectra: Sequence[BlockSpectrum], js: np.ndarray) -> list[dict[str, Any]]:
    """Per block group: mean JS of pairs inside the group, of pairs with one block in it, and how much
    the model's mean JS drops when the group is removed (``contribution``; larger = drives it more)."""
    n = len(spectra)
    overall = mean_offdiagonal(js)
    rows = []
    for g in sorted({s.group for s in spectra}):
        inside = [i for i, s in enumerate(spectra) if s.group == g]
        outside = [i for i in range(n) if i not in inside]
        cross = js[np.ix_(inside, outside)] if inside and outside else np.zeros((0,))
        without = mean_offdiagonal(js, outside)
        rows.append(
            {
                "group": g, "num_blocks": len(inside), "mean_js_within": mean_offdiagonal(js, inside),
                "mean_js_to_others": float(cross.mean()) if cross.size else None,
                "mean_js_without_group": without,
                "contribution": None if overall is None or without is None else overall - without,
            }
        )  # fmt: skip
    rows.sort(key=lambda r: -(r["contribution"] if r["contribution"] is not None else -math.inf))
    return rows


@dataclass(frozen=True, eq=False)
class HeterogeneityReport:
    """JS matrices per convention, scale spread, drivers and a verdict for one model's blocks."""

    blocks: tuple[BlockSpectrum, ...]
    conventions: tuple[JSConvention, ...]
    js: dict[str, np.ndarray]
    mean_js: dict[str, float | None]
    scale_spread: dict[str, Any]
    drivers: dict[str, list[dict[str, Any]]]
    verdict: str
    verdict_rule: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def densities(self, convention: str | JSConvention | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grid and block densities for a convention (recomputed; used by the figures)."""
        conv = self._convention(convention)
        return block_densities(self.blocks, conv)

    def _convention(self, convention: str | JSConvention | None) -> JSConvention:
        if isinstance(convention, JSConvention):
            return convention
        name = convention or self.conventions[0].name
        for c in self.conventions:
            if c.name == name:
                return c
        return get_convention(name)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "blocks": [b.to_dict() for b in self.blocks],
                "conventions": [c.to_dict() for c in self.conventions],
                "js_matrix": {k: v.tolist() for k, v in self.js.items()},
                "mean_js": dict(self.mean_js),
                "scale_spread": self.scale_spread,
                "drivers": self.drivers,
                "verdict": self.verdict,
                "verdict_rule": self.verdict_rule,
                **self.extra,
            }
        )


#: Verdict thresholds (see :func:`analyze_heterogeneity`).
SPREAD_DECADES_THRESHOLD = 3.0
SHAPE_JS_THRESHOLD = 0.4


def spectra_from_hessian(report: Any) -> list[BlockSpectrum]:
    """Block spectra from a :class:`hessian_spectra.curvature.probe.HessianReport` (or its ``to_dict()``)."""
    rows = report["blocks"] if isinstance(report, dict) else report.to_dict()["blocks"]
    return [
        BlockSpectrum.from_slq(
            r["name"], r["dim"], r["nodes"], r["weights"], trace=r["trace"], trace_stderr=r["trace_stderr"],
            lambda_max=r["lambda_max"], lambda_min=r["lambda_min"],
        )
        for r in rows
    ]  # fmt: skip


#: Blocks with fewer eigenvalues than this are left out of the JS matrices (a handful of eigenvalues
#: is not a density); they still count in the scale spread.
MIN_JS_DIM = 16


def analyze_heterogeneity(
    spectra: Sequence[BlockSpectrum],
    conventions: Sequence[JSConvention | str] = DEFAULT_CONVENTIONS,
    *,
    min_dim: int = MIN_JS_DIM,
) -> HeterogeneityReport:
    """JS matrices under each convention (a :class:`JSConvention` or a name in :data:`CONVENTIONS`), the
    scale spread, group drivers and a verdict.

    Verdict (a stated heuristic): ``heterogeneous`` when block lambda_max values span >= 3 decades
    (curvature scales differ by >= 1000x) or the mean pairwise shape-only JS is >= 0.4 (block spectra
    differ in shape), else ``homogeneous``; ``single block`` with fewer than two blocks.
    """
    everything = tuple(spectra)
    if not everything:
        raise ValueError("no block spectra given")
    conventions = tuple(get_convention(c) for c in conventions)
    spread = scale_spread(everything)
    spectra = tuple(s for s in everything if s.dim >= min_dim)
    excluded = [s.name for s in everything if s.dim < min_dim]
    if not spectra:
        spectra, excluded = everything, []
    js: dict[str, np.ndarray] = {}
    mean: dict[str, float | None] = {}
    drivers: dict[str, list[dict[str, Any]]] = {}
    for conv in conventions:
        _, dens = block_densities(spectra, conv)
        js[conv.name] = js_matrix(dens)
        mean[conv.name] = mean_offdiagonal(js[conv.name])
        drivers[conv.name] = group_drivers(spectra, js[conv.name])
    rule = (
        f"heterogeneous when block lambda_max spans >= {SPREAD_DECADES_THRESHOLD:g} decades or the mean "
        f"pairwise '{SHAPE_ONLY.name}' JS distance is >= {SHAPE_JS_THRESHOLD:g}; else homogeneous"
    )
    decades = spread["lambda_max"]["decades"] or 0.0
    shape = mean.get(SHAPE_ONLY.name) or 0.0
    if len(everything) < 2:
        verdict = "single block"
    else:
        het = decades >= SPREAD_DECADES_THRESHOLD or shape >= SHAPE_JS_THRESHOLD
        verdict = "heterogeneous" if het else "homogeneous"
    return HeterogeneityReport(
        blocks=spectra, conventions=tuple(conventions), js=js, mean_js=mean, scale_spread=spread,
        drivers=drivers, verdict=verdict, verdict_rule=rule,
        extra={"min_dim": min_dim, "excluded_from_js": excluded},
    )  # fmt: skip
