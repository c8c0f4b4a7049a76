"""How far apart the curvature scales of the Hessian blocks are: named statistics over block scales (in
decades), each with a bootstrap over the SLQ probes of the estimated blocks.

A block's scale is its spectral radius max|lambda| (``radius``) or its root-mean-square eigenvalue
sqrt(tr(H_bb^2) / n) (``rms``); a statistic summarises log10 of those scales over the non-flat blocks,
each block weighted by its parameter count (``parameters``) or equally (``blocks``): the interquartile
range, the 10-90% range, or the mean distance below the largest scale. Every statistic is a difference of
logs, so multiplying the loss by a constant does not change it. Design notes: spectra/docs/heterogeneity.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum

__all__ = [
    "ScaleStatistic",
    "STATISTICS",
    "DEFAULT_STATISTIC",
    "get_statistic",
    "block_scales",
    "weighted_quantile",
    "bootstrap_statistic",
]


@dataclass(frozen=True)
class ScaleStatistic:
    """A statistic of log10 block curvature scales, in decades (see the module docstring)."""

    name: str
    scale: Literal["radius", "rms"]
    weighting: Literal["parameters", "blocks"]
    summary: Literal["iqr", "p10-p90", "below-max"]

    def describe(self) -> str:
        """One sentence: what is summarised, over which blocks, with which weights."""
        scale = {
            "radius": "rho_b = block spectral radius max|lambda|",
            "rms": "rho_b = sqrt(tr(H_bb^2) / n_b)",
        }[self.scale]
        weight = (
            "parameter-weighted"
            if self.weighting == "parameters"
            else "block-weighted (every block counts once)"
        )
        summary = {
            "iqr": "interquartile range (75th - 25th percentile) of log10(rho_b)",
            "p10-p90": "90th - 10th percentile of log10(rho_b)",
            "below-max": "mean of log10(rho_max / rho_b), rho_max the largest rho_b",
        }[self.summary]
        return f"{weight} {summary} over the non-flat blocks, {scale}; in decades"

    def value(self, log_scales: np.ndarray, weights: np.ndarray) -> float:
        """The statistic of ``log_scales`` (log10, one per block) with the statistic's block weights."""
        if log_scales.size == 0:
            return float("nan")
        if self.summary == "below-max":
            return float(np.average(log_scales.max() - log_scales, weights=weights))
        lo, hi = (0.25, 0.75) if self.summary == "iqr" else (0.10, 0.90)
        return weighted_quantile(log_scales, weights, hi) - weighted_quantile(log_scales, weights, lo)

    def weights(self, spectra: Sequence[BlockSpectrum]) -> np.ndarray:
        if self.weighting == "blocks":
            return np.ones(len(spectra))
        return np.array([float(s.dim) for s in spectra])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "weighting": self.weighting, "summary": self.summary,
                "description": self.describe()}  # fmt: skip


#: The statistics measured on the validation suite (bench/RESULTS.md, issue 11), by name.
STATISTICS: dict[str, ScaleStatistic] = {
    s.name: s
    for s in (
        ScaleStatistic("scale-iqr", "radius", "parameters", "iqr"),
        ScaleStatistic("scale-iqr-blocks", "radius", "blocks", "iqr"),
        ScaleStatistic("scale-p10-p90", "radius", "parameters", "p10-p90"),
        ScaleStatistic("rms-iqr", "rms", "parameters", "iqr"),
        ScaleStatistic("sharpness-gap", "radius", "parameters", "below-max"),
    )
}
DEFAULT_STATISTIC = "sharpness-gap"


def get_statistic(name: str | ScaleStatistic) -> ScaleStatistic:
    """The named statistic (:data:`STATISTICS`); a :class:`ScaleStatistic` is returned as is."""
    if isinstance(name, ScaleStatistic):
        return name
    try:
        return STATISTICS[name]
    except KeyError:
        raise ValueError(f"unknown scale statistic {name!r}; known: {', '.join(STATISTICS)}") from None


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Quantile ``q`` of ``values`` where value i carries weight ``weights[i]``: linear interpolation
    between the midpoints of the cumulative weights (a block holding most weight fills most quantiles)."""
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    cum = np.cumsum(w)
    mid = (cum - 0.5 * w) / cum[-1]
    return float(np.interp(q, mid, v))


def _per_probe(s: BlockSpectrum, scale: str) -> np.ndarray | None:
    """One value per SLQ probe (max |node| or the probe's sum w node^2, weights renormalised per probe);
    None for an exact block."""
    if s.source == "exact" or s.probe_ids is None:
        return None
    ids = s.probe_ids
    n = int(ids.max()) + 1
    if scale == "radius":
        out = np.zeros(n)
        np.maximum.at(out, ids, np.abs(s.nodes))
        return out
    mass = np.bincount(ids, weights=s.weights, minlength=n)
    second = np.bincount(ids, weights=s.weights * s.nodes**2, minlength=n)
    return np.where(mass > 0, second / np.where(mass > 0, mass, 1.0), 0.0)


def block_scales(spectra: Sequence[BlockSpectrum], scale: str) -> np.ndarray:
    """Each block's scale: spectral radius, or root-mean-square eigenvalue."""
    if scale == "radius":
        return np.array([s.spectral_radius for s in spectra])
    return np.array([float(np.sqrt(np.dot(s.weights, s.nodes**2))) for s in spectra])


def bootstrap_statistic(
    spectra: Sequence[BlockSpectrum], statistic: str | ScaleStatistic, *, samples: int = 200, seed: int = 0
) -> dict[str, Any]:
    """The statistic's sampling spread over SLQ probes: every estimated block's probes resampled with
    replacement (exact blocks fixed), the statistic recomputed ``samples`` times. Returns the standard
    deviation and the 5-95% interval (0 and the value itself when every block is exact)."""
    stat = get_statistic(statistic)
    weights = stat.weights(spectra)
    base = block_scales(spectra, stat.scale)
    value = stat.value(np.log10(base), weights)
    probes = [_per_probe(s, stat.scale) for s in spectra]
    est = [i for i, p in enumerate(probes) if p is not None and p.size > 1]
    if not est:
        return {"value": value, "stderr": 0.0, "low": value, "high": value, "samples": 0, "over": "probes"}
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    scales = base.copy()
    for k in range(samples):
        for i in est:
            p = probes[i]
            pick = p[rng.integers(0, p.size, p.size)]
            scales[i] = pick.max() if stat.scale == "radius" else np.sqrt(pick.mean())
        draws[k] = stat.value(np.log10(np.maximum(scales, 1e-300)), weights)
    lo, hi = np.percentile(draws, [5, 95])
    return {"value": value, "stderr": float(draws.std(ddof=1)), "low": float(lo), "high": float(hi),
            "samples": samples, "over": "probes"}  # fmt: skip
