"""The heterogeneity analysis of one model's blocks: flat blocks set aside, the spread of block curvature
scales (the statistic the verdict rests on, with a bootstrap uncertainty), JS matrices per convention,
the groups that drive the spread, and a one-line verdict citing what decided it.
Design notes: spectra/docs/heterogeneity.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum
from hessian_spectra.analyses.heterogeneity.conventions import (
    DEFAULT_CONVENTIONS,
    JSConvention,
    get_convention,
)
from hessian_spectra.analyses.heterogeneity.densities import block_densities
from hessian_spectra.analyses.heterogeneity.drivers import group_drivers, statistic_drivers
from hessian_spectra.analyses.heterogeneity.flat import FlatBlock, find_flat
from hessian_spectra.analyses.heterogeneity.js import js_matrix, mean_offdiagonal
from hessian_spectra.analyses.heterogeneity.scales import (
    DEFAULT_STATISTIC,
    STATISTICS,
    block_scales,
    bootstrap_statistic,
    get_statistic,
)
from hessian_spectra.io import json_safe

__all__ = ["HeterogeneityReport", "scale_spread", "analyze_heterogeneity", "THRESHOLDS", "MIN_JS_DIM"]

#: Verdict threshold of each statistic, in decades (chosen on the issue 11 suite, bench/RESULTS.md):
#: heterogeneous when the statistic is >= its threshold.
THRESHOLDS = {
    "sharpness-gap": 0.8, "scale-iqr": 1.0, "scale-iqr-blocks": 1.5, "scale-p10-p90": 1.5, "rms-iqr": 1.0,
}  # fmt: skip

#: Blocks with fewer eigenvalues than this are left out of the JS matrices (a handful of eigenvalues
#: is not a density); they still count in the scale statistics.
MIN_JS_DIM = 16


def scale_spread(spectra: Sequence[BlockSpectrum]) -> dict[str, Any]:
    """Largest / smallest positive block lambda_max, |trace|/dim and |trace| (ratio, decades, the blocks at
    either end). Extremes: one block at either end decides them, so they are context, not the verdict."""

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
        hi, lo = max(pos, key=lambda t: t[1]), min(pos, key=lambda t: t[1])
        return {
            "ratio": hi[1] / lo[1], "decades": math.log10(hi[1] / lo[1]), "max_block": hi[0], "min_block": lo[0],
            "max": hi[1], "min": lo[1], "num_positive": len(pos),
        }  # fmt: skip

    return {
        "lambda_max": spread([(s.name, s.lambda_max) for s in spectra]),
        "mean_curvature": spread([(s.name, abs(s.trace) / s.dim) for s in spectra]),
        "trace": spread([(s.name, abs(s.trace)) for s in spectra]),
        "note": "over non-flat blocks; ratio = largest / smallest positive value; mean_curvature = |trace| / dim",
    }


@dataclass(frozen=True, eq=False)
class HeterogeneityReport:
    """Flat blocks, the scale statistic and its verdict, JS matrices per convention and drivers.

    ``blocks`` are the blocks in the JS matrices (non-flat, at least ``min_dim`` eigenvalues);
    ``all_blocks`` every block given; ``statistic`` the verdict's statistic (value, bootstrap stderr and
    5-95% interval over SLQ probes, threshold); ``statistics`` every named scale statistic's value.
    """

    blocks: tuple[BlockSpectrum, ...]
    conventions: tuple[JSConvention, ...]
    js: dict[str, np.ndarray]
    mean_js: dict[str, float | None]
    scale_spread: dict[str, Any]
    drivers: dict[str, list[dict[str, Any]]]
    verdict: str
    verdict_rule: str
    verdict_line: str = ""
    statistic: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, float | None] = field(default_factory=dict)
    flat: tuple[FlatBlock, ...] = ()
    all_blocks: tuple[BlockSpectrum, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def densities(self, convention: str | JSConvention | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grid and block densities for a convention (recomputed; used by the figures)."""
        return block_densities(self.blocks, self._convention(convention))

    def _convention(self, convention: str | JSConvention | None) -> JSConvention:
        if isinstance(convention, JSConvention):
            return convention
        name = convention or self.conventions[0].name
        return next((c for c in self.conventions if c.name == name), None) or get_convention(name)

    def to_dict(self) -> dict[str, Any]:
        flat = {f.name for f in self.flat}
        in_js = set(self.names)
        rows = [
            {**b.to_dict(), "method": b.source, "flat": b.name in flat, "in_js": b.name in in_js}
            for b in (self.all_blocks or self.blocks)
        ]
        return json_safe(
            {
                "blocks": rows, "conventions": [c.to_dict() for c in self.conventions],
                "js_blocks": self.names, "js_matrix": {k: v.tolist() for k, v in self.js.items()},
                "mean_js": dict(self.mean_js), "scale_spread": self.scale_spread, "drivers": self.drivers,
                "verdict": self.verdict, "verdict_rule": self.verdict_rule, "verdict_line": self.verdict_line,
                "statistic": self.statistic, "statistics": self.statistics,
                "flat_blocks": [f.to_dict() for f in self.flat], **self.extra,
            }
        )  # fmt: skip


def _ratio(decades: float) -> str:
    return f"{10.0**decades:.3g}x"


def _against(value: float, limit: float) -> str:
    """``value`` with enough decimals (2 or more) that the printed number compares with ``limit`` the way
    the value does: never "0.80 < 0.80"."""
    for digits in range(2, 12):
        text = f"{value:.{digits}f}"
        if (float(text) >= limit) == (value >= limit):
            return text
    return repr(value)


def analyze_heterogeneity(
    spectra: Sequence[BlockSpectrum],
    conventions: Sequence[JSConvention | str] = DEFAULT_CONVENTIONS,
    *,
    min_dim: int = MIN_JS_DIM,
    statistic: str = DEFAULT_STATISTIC,
    threshold: float | None = None,
    dtype: str | None = None,
    flat_tol: float | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> HeterogeneityReport:
    """Flat blocks (:func:`~hessian_spectra.analyses.heterogeneity.flat.find_flat`, relative to the model's
    curvature scale, tolerance from ``dtype``) are set aside; on the rest: every scale statistic, the
    verdict's ``statistic`` with a bootstrap over SLQ probes (``bootstrap`` resamples), JS matrices under
    each convention (blocks of at least ``min_dim`` eigenvalues) and the drivers of each.

    Verdict: ``heterogeneous`` when the statistic is >= ``threshold`` (default :data:`THRESHOLDS`), else
    ``homogeneous``; ``single block`` with fewer than two non-flat blocks.
    """
    everything = tuple(spectra)
    if not everything:
        raise ValueError("no block spectra given")
    conventions = tuple(get_convention(c) for c in conventions)
    stat = get_statistic(statistic)
    limit = THRESHOLDS.get(stat.name, 1.0) if threshold is None else float(threshold)
    flat, scale, tol = find_flat(everything, dtype, tol=flat_tol)
    flat_names = {f.name for f in flat}
    live = tuple(s for s in everything if s.name not in flat_names)
    values = {}
    for name, st in STATISTICS.items():
        values[name] = (
            st.value(np.log10(block_scales(live, st.scale)), st.weights(live)) if len(live) >= 2 else None
        )
    boot = bootstrap_statistic(live, stat, samples=bootstrap, seed=seed) if len(live) >= 2 else {}
    value = values.get(stat.name)
    rule = (
        f"heterogeneous when {stat.name} >= {limit:g} decades ({_ratio(limit)}), else homogeneous; {stat.name} = "
        f"{stat.describe()}; flat blocks (spectral radius <= {tol:.3g} x the model's curvature scale) left out"
    )
    if value is None:
        verdict = "single block"
        line = f"single block: {len(live)} non-flat block(s), nothing to compare"
    else:
        verdict = "heterogeneous" if value >= limit else "homogeneous"
        err = boot.get("stderr", 0.0)
        what = "middle half" if stat.summary == "iqr" else "10-90% of the"
        line = (
            f"{verdict}: {stat.name} {_against(value, limit)} +- {err:.2g} decades {'>=' if value >= limit else '<'} {limit:g} "
            f"(block curvature scales across the {what} {'parameters' if stat.weighting == 'parameters' else 'blocks'}"
            f" span {_ratio(value)})"
        )
        if stat.summary == "below-max":
            line = (
                f"{verdict}: {stat.name} {_against(value, limit)} +- {err:.2g} decades {'>=' if value >= limit else '<'} "
                f"{limit:g} (the typical parameter's block curvature is {_ratio(value)} below the sharpest block's)"
            )
        if err and abs(value - limit) < 2 * err:
            line += "; borderline: within 2 standard errors of the threshold"
        if flat:
            line += f"; {len(flat)} flat block(s) left out"
    js_set = tuple(s for s in live if s.dim >= min_dim) or live
    js, mean, drivers = {}, {}, {}
    for conv in conventions:
        if len(js_set) >= 2:
            js[conv.name] = js_matrix(block_densities(js_set, conv)[1])
        else:
            js[conv.name] = np.zeros((len(js_set), len(js_set)))
        mean[conv.name] = mean_offdiagonal(js[conv.name])
        drivers[conv.name] = group_drivers(js_set, js[conv.name])
    drivers["statistic"] = statistic_drivers(live, stat, value) if value is not None else []
    # the one quantity the verdict compared, as the report's findings cite it (never another number)
    deciding = [] if value is None else [
        {"quantity": f"{stat.name} (decades)", "key": stat.name, "value": value, "threshold": limit,
         "fired": value >= limit, "stderr": boot.get("stderr")}
    ]  # fmt: skip
    summary = {
        **stat.to_dict(),
        "value": value,
        "threshold": limit,
        **{k: v for k, v in boot.items() if k != "value"},
    }
    return HeterogeneityReport(
        blocks=js_set, conventions=conventions, js=js, mean_js=mean, scale_spread=scale_spread(live),
        drivers=drivers, verdict=verdict, verdict_rule=rule, verdict_line=line, statistic=summary,
        statistics=values, flat=tuple(flat), all_blocks=everything,
        extra={
            "min_dim": min_dim, "model_scale": scale, "flat_tolerance": tol, "dtype": dtype,
            "excluded_from_js": [s.name for s in everything if s.name not in {b.name for b in js_set}],
            "num_exact_blocks": sum(s.source == "exact" for s in everything),
            "deciding": deciding,
        },
    )  # fmt: skip
