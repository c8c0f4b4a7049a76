"""Robust model summary: each scalar metric's median, mean, mean without outliers and named outliers.

Reduces the per-matrix rows of :mod:`hessian_spectra.weights.metrics` to one distribution per metric
(MAD-based outlier rule), as reported in a weights report's ``summary``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from hessian_spectra.weights.metrics import SCALAR_METRICS, MatrixMetrics

__all__ = ["MetricSummary", "ModelSummary", "OUTLIER_RULE", "summarize"]

OUTLIER_RULE = "|x - median| > 5 * 1.4826 * MAD (MAD = median |x - median|); none flagged when MAD = 0"


@dataclass(frozen=True)
class MetricSummary:
    """Distribution of one metric over matrices: robust centre, mean, mean without outliers, who is out."""

    metric: str
    n: int
    median: float | None
    mean: float | None
    mean_without_outliers: float | None
    geometric_mean: float | None  # None unless every value is > 0 (e.g. GMCN for the modified kappa)
    outliers: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        from hessian_spectra.io import json_safe

        return json_safe(asdict(self))


@dataclass(frozen=True)
class ModelSummary:
    """Per-metric summaries over a model's matrices, and the outlier rule used."""

    n_matrices: int
    metrics: dict[str, MetricSummary]
    outlier_rule: str = OUTLIER_RULE

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {
            "n_matrices": self.n_matrices,
            "outlier_rule": self.outlier_rule,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
        }


def summarize(metrics: Sequence[MatrixMetrics], *, mad_k: float = 5.0) -> ModelSummary:
    """Median, mean, mean without outliers and named outliers of every scalar metric (finite values only).

    Outliers: ``|x - median| > mad_k * 1.4826 * MAD`` (1.4826 MAD estimates a Gaussian sigma, so the
    default flags values ~5 sigma from the centre, robust to the outliers themselves).
    """
    out: dict[str, MetricSummary] = {}
    for key in SCALAR_METRICS:
        names, vals = [], []
        for i, mm in enumerate(metrics):
            v = getattr(mm, key)
            if v is not None and math.isfinite(float(v)):
                names.append(mm.name or f"#{i}")
                vals.append(float(v))
        x = np.asarray(vals)
        if x.size == 0:
            out[key] = MetricSummary(key, 0, None, None, None, None, ())
            continue
        med = float(np.median(x))
        mad = float(np.median(np.abs(x - med)))
        is_out = np.abs(x - med) > mad_k * 1.4826 * mad if mad > 0 else np.zeros(x.size, bool)
        keep = x[~is_out]
        gmean = float(np.exp(np.mean(np.log(x)))) if np.all(x > 0) else None
        out[key] = MetricSummary(
            metric=key,
            n=int(x.size),
            median=med,
            mean=float(x.mean()),
            mean_without_outliers=float(keep.mean()) if keep.size else None,
            geometric_mean=gmean,
            outliers=tuple(nm for nm, o in zip(names, is_out, strict=True) if o),
        )
    return ModelSummary(n_matrices=len(metrics), metrics=out)
