"""Block heterogeneity of the Hessian: how different the spectra of the diagonal blocks are.

Input: one :class:`BlockSpectrum` per block (exact eigenvalues, or SLQ nodes and weights). Output: a
:class:`HeterogeneityReport` with, for each named :class:`JSConvention`, the pairwise Jensen-Shannon
distance matrix between the block spectral densities; the spread of block curvature scales (block
lambda_max and traces); a one-line verdict; and which block groups (Q/K, V, attention output, MLP,
embeddings, norms, ...) drive the heterogeneity.

The JS value depends on how densities are built, so every number is tagged with its convention:

* ``scales-kept``: one common LINEAR grid for all blocks spanning [min lambda_min, max lambda_max]
  (5% padding); Gaussian kernel, sigma = 1% of that span; negative eigenvalues kept where they are.
  Blocks whose scales are far below the largest collapse to a spike at zero and look alike.
* ``shape-only``: each block divided by its own spectral radius max|lambda| (= lambda_max unless the
  negative side dominates), so every block lives in [-1, 1]; linear grid on [-1.05, 1.05]; sigma = 1%
  of the span. Only the shape of the spectrum counts.
* ``scales-kept-log``: common SYMLOG axis x = sign(t) log10(1 + |t|/tau), tau = 1e-6 x the largest
  |eigenvalue| over all blocks (eigenvalues below tau sit near 0, negatives mirrored); sigma = 1% of the
  span. Scales and shapes both count; blocks at different orders of magnitude are told apart.

* ``paper``: the "Why Transformers Need Adam" density convention (zyushun/hessian-spectrum): ABSOLUTE
  Gaussian kernel, sigma^2 = 1e-5 (sigma = 0.00316, in eigenvalue units, whatever the blocks' scales),
  linear grid of 50,000 points padded by 1.0 (absolute) on each side; here one common grid for all blocks
  (the paper's grid is per block; JS needs a common one), negative eigenvalues kept in place. Each grid
  point gets the kernel mass of its bin (edges at the midpoints, outer bins open), integrated
  analytically with the normal CDF, so densities sum to one whatever the grid step; when the step exceeds
  sigma / 2 (a wide eigenvalue range) the grid is refined to step sigma / 2, up to ``max_grid_points``,
  beyond which the bins (not the kernel) set the resolution and a warning says so.

JS distance = sqrt(JS divergence) with log base 2, so it lies in [0, 1] (0 identical, 1 disjoint).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from spectra.io import json_safe

__all__ = [
    "BlockSpectrum",
    "JSConvention",
    "SCALES_KEPT",
    "SHAPE_ONLY",
    "SCALES_KEPT_LOG",
    "PAPER",
    "DEFAULT_CONVENTIONS",
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

#: Groups the drivers analysis reports (from :func:`spectra.roles.tensor_role` and the block kind).
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
    """The block group (:data:`GROUPS`) a block name belongs to, via :func:`spectra.roles.tensor_role`.

    Head/part suffixes written by :mod:`spectra.blocks` (``...q_proj.weight[head 0]``, ``:q``) are honoured:
    a Q or K part of a fused QKV tensor is ``qk``, a V part ``v``.
    """
    from spectra.roles import tensor_role

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

    The kernel width is either relative (``sigma_fraction`` of the grid span) or absolute (``sigma_abs``,
    a standard deviation in the units of the axis); exactly one is set. ``padding_abs``, when set, pads the
    pooled range by that amount on each side instead of the relative ``padding``.
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
    max_grid_points: int = 1_000_000

    def __post_init__(self) -> None:
        if (self.sigma_fraction is None) == (self.sigma_abs is None):
            raise ValueError(f"convention {self.name!r}: set exactly one of sigma_fraction and sigma_abs")
        sigma = self.sigma_abs if self.sigma_abs is not None else self.sigma_fraction
        if not sigma > 0 or self.grid_points < 2 or self.max_grid_points < self.grid_points:
            raise ValueError(
                f"convention {self.name!r}: sigma must be > 0 and 2 <= grid_points <= max_grid_points"
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
        if self.sigma_abs is None:
            return (
                f"{scale}; {axis}; {self.grid_points}-point grid over the pooled range padded by {pad}; "
                f"Gaussian kernel sigma = {100 * self.sigma_fraction:g}% of the grid span; "
                "JS distance = sqrt(JS divergence), log base 2, in [0, 1]"
            )
        return (
            f"{scale}; {axis}; {self.grid_points}-point grid over the pooled range padded by {pad} on each side, "
            f"refined to step sigma/2 when coarser (at most {self.max_grid_points} points); absolute Gaussian "
            f"kernel sigma = {self.sigma_abs:.4g} (sigma^2 = {self.sigma_abs**2:.3g}), each grid point's bin "
            "mass integrated exactly with the normal CDF so densities sum to one; "
            "JS distance = sqrt(JS divergence), log base 2, in [0, 1]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "scale": self.scale, "axis": self.axis, "sigma_fraction": self.sigma_fraction,
            "sigma_abs": self.sigma_abs, "grid_points": self.grid_points, "padding": self.padding,
            "padding_abs": self.padding_abs, "max_grid_points": self.max_grid_points, "log_floor": self.log_floor,
            "description": self.describe(),
        }  # fmt: skip


SCALES_KEPT = JSConvention("scales-kept", scale="common", axis="linear")
SHAPE_ONLY = JSConvention("shape-only", scale="own", axis="linear")
SCALES_KEPT_LOG = JSConvention("scales-kept-log", scale="common", axis="symlog")
#: The "Why Transformers Need Adam" convention: absolute sigma^2 = 1e-5, 50,000 points, +-1 padding.
PAPER = JSConvention(
    "paper", scale="common", axis="linear", sigma_fraction=None, sigma_abs=math.sqrt(1e-5), grid_points=50_000,
    padding_abs=1.0,
)  # fmt: skip
DEFAULT_CONVENTIONS: tuple[JSConvention, ...] = (SCALES_KEPT, SHAPE_ONLY, SCALES_KEPT_LOG)


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
    spectra: Sequence[BlockSpectrum], convention: JSConvention = SCALES_KEPT
) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, densities)``: each block's kernel-smoothed density on the convention's common grid,
    as a probability vector over the grid points (rows sum to one)."""
    if not spectra:
        raise ValueError("no block spectra given")
    xs = _transform(spectra, convention)
    lo = min(float(x.min()) for x in xs)
    hi = max(float(x.max()) for x in xs)
    if convention.scale == "own" and convention.axis == "linear":
        lo, hi = min(lo, -1.0), max(hi, 1.0)
    if convention.padding_abs is not None:
        lo, hi = lo - convention.padding_abs, hi + convention.padding_abs
    else:
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        lo, hi = lo - convention.padding * span, hi + convention.padding * span
    if convention.sigma_abs is None:
        grid = np.linspace(lo, hi, convention.grid_points)
        sigma = convention.sigma_fraction * (hi - lo)
        dens = np.empty((len(xs), grid.size))
        for b, (x, s) in enumerate(zip(xs, spectra, strict=True)):
            dens[b] = _smooth(grid, x, s.weights, sigma)
        return grid, dens
    sigma = convention.sigma_abs
    n = _absolute_grid_points(hi - lo, sigma, convention)
    grid = np.linspace(lo, hi, n)
    dens = np.empty((len(xs), grid.size))
    for b, (x, s) in enumerate(zip(xs, spectra, strict=True)):
        dens[b] = _bin_masses(grid, x, s.weights, sigma)
    return grid, dens


def _absolute_grid_points(span: float, sigma: float, conv: JSConvention) -> int:
    """Grid size for an absolute kernel: ``grid_points``, raised so the step is <= sigma / 2 (capped at
    ``max_grid_points``, with a warning that the bins then set the resolution)."""
    needed = int(math.ceil(span / (0.5 * sigma))) + 1
    if needed <= conv.grid_points:
        return conv.grid_points
    if needed > conv.max_grid_points:
        step = span / (conv.max_grid_points - 1)
        warnings.warn(
            f"convention {conv.name!r}: the pooled eigenvalue range {span:.4g} needs {needed} grid points for "
            f"step sigma/2; capped at {conv.max_grid_points} (step {step:.3g} = {step / sigma:.2g} sigma): "
            "the bin width, not the kernel, sets the resolution",
            stacklevel=3,
        )
        return conv.max_grid_points
    return needed


def _bin_masses(grid: np.ndarray, x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Mass of the weighted Gaussian mixture in each grid point's bin (edges at midpoints, outer bins open
    to +-inf), from the normal CDF: exact for any grid step, so the vector sums to one."""
    from scipy.special import ndtr

    n = grid.size
    step = (grid[-1] - grid[0]) / (n - 1)
    edges = np.concatenate([[-np.inf], 0.5 * (grid[:-1] + grid[1:]), [np.inf]])
    half = int(math.ceil(9.0 * sigma / step)) + 1  # Gaussian mass beyond 9 sigma is < 1e-18
    width = min(2 * half + 1, n)
    centre = np.clip(np.rint((x - grid[0]) / step).astype(np.int64), 0, n - 1)
    start = np.clip(centre - half, 0, n - width)
    out = np.zeros(n)
    chunk = max(1, 4_000_000 // width)
    for i in range(0, x.size, chunk):
        idx = start[i : i + chunk, None] + np.arange(width)
        xi = x[i : i + chunk, None]
        mass = ndtr((edges[idx + 1] - xi) / sigma) - ndtr((edges[idx] - xi) / sigma)
        out += np.bincount(idx.ravel(), (w[i : i + chunk, None] * mass).ravel(), minlength=n)
    total = out.sum()
    return out / total if total > 0 else np.full(n, 1.0 / n)


def _smooth(grid: np.ndarray, x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of weighted Gaussians at ``x`` evaluated on ``grid``, normalised to a probability vector."""
    out = np.zeros(grid.size)
    chunk = max(1, 4_000_000 // grid.size)
    for i in range(0, x.size, chunk):
        z = (grid[None, :] - x[i : i + chunk, None]) / sigma
        out += w[i : i + chunk] @ np.exp(-0.5 * z * z)
    total = out.sum()
    return out / total if total > 0 else np.full(grid.size, 1.0 / grid.size)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, log base 2) between probability vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = (a > 0) & (m > 0)
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def js_matrix(densities: np.ndarray) -> np.ndarray:
    """Symmetric matrix of pairwise JS distances between the rows of ``densities``."""
    n = densities.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = js_distance(densities[i], densities[j])
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
        raise KeyError(f"no convention {name!r}; have {[c.name for c in self.conventions]}")

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
    """Block spectra from a :class:`spectra.hessian_probe.HessianReport` (or its ``to_dict()``)."""
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
    conventions: Sequence[JSConvention] = DEFAULT_CONVENTIONS,
    *,
    min_dim: int = MIN_JS_DIM,
) -> HeterogeneityReport:
    """JS matrices under each convention, the scale spread, group drivers and a verdict.

    Verdict (a stated heuristic): ``heterogeneous`` when block lambda_max values span >= 3 decades
    (curvature scales differ by >= 1000x) or the mean pairwise shape-only JS is >= 0.4 (block spectra
    differ in shape), else ``homogeneous``; ``single block`` with fewer than two blocks.
    """
    everything = tuple(spectra)
    if not everything:
        raise ValueError("no block spectra given")
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
