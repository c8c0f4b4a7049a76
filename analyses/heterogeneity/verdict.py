"""The heterogeneity analysis of one model's blocks: JS matrices per convention, the spread of block
curvature scales, the block groups that drive it, and a verdict, gathered in a HeterogeneityReport."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum
from hessian_spectra.analyses.heterogeneity.conventions import (
    DEFAULT_CONVENTIONS,
    SHAPE_ONLY,
    JSConvention,
    get_convention,
)
from hessian_spectra.analyses.heterogeneity.densities import block_densities
from hessian_spectra.analyses.heterogeneity.js import js_matrix, mean_offdiagonal
from hessian_spectra.io import json_safe

__all__ = ["HeterogeneityReport", "scale_spread", "group_drivers", "analyze_heterogeneity"]


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
    # the quantities the verdict compared, as the report (and its findings) cite them
    deciding = [
        {"quantity": "lambda_max spread (decades)", "key": "decades", "value": decades,
         "threshold": SPREAD_DECADES_THRESHOLD, "fired": decades >= SPREAD_DECADES_THRESHOLD},
        {"quantity": f"mean pairwise '{SHAPE_ONLY.name}' JS distance", "key": "mean_js", "value": shape,
         "threshold": SHAPE_JS_THRESHOLD, "fired": shape >= SHAPE_JS_THRESHOLD},
    ]  # fmt: skip
    return HeterogeneityReport(
        blocks=spectra, conventions=tuple(conventions), js=js, mean_js=mean, scale_spread=spread,
        drivers=drivers, verdict=verdict, verdict_rule=rule,
        extra={"min_dim": min_dim, "excluded_from_js": excluded, "deciding": deciding},
    )  # fmt: skip
