"""Marchenko-Pastur statistics of one matrix: noise level, bulk edge, Tracy-Widom margin and spike count.

Random-matrix theory for the noise-plus-spikes model W = S + s Z, used by
:func:`hessian_spectra.weights.metrics.compute_metrics` (the ``mp_*`` columns); pure numpy, no scipy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

__all__ = ["MPFit", "TW1_QUANTILE_99", "marchenko_pastur", "mp_median"]

TW1_QUANTILE_99 = 2.0234  # 99% quantile of the Tracy-Widom (beta=1) law (Johnstone 2001, table 1)


@dataclass(frozen=True)
class MPFit:
    """Marchenko-Pastur bulk of a noise-plus-spikes model W = S + s Z (Z iid, unit variance).

    ``noise_sigma`` = s estimated from the median singular value; ``bulk_edge`` = s (sqrt N + sqrt M);
    ``margin`` = Tracy-Widom allowance added to the edge; ``n_spikes`` = #{sigma > edge + margin};
    ``beta`` = M / N <= 1; ``gd_threshold`` = Gavish-Donoho optimal hard threshold omega(beta) * median.
    """

    noise_sigma: float
    bulk_edge: float
    n_spikes: int
    margin: float
    beta: float
    gd_threshold: float

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        from hessian_spectra.io import json_safe

        return json_safe(asdict(self))


@lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law of eigenvalues of Z^T Z / N (Z is N x M iid unit variance, beta = M/N <= 1).

    With x = c + r cos(theta) (c, r the centre and half-width of the support) the MP integrand becomes
    smooth except near theta = pi when beta -> 1, so geometrically graded 24-point Gauss-Legendre
    panels give the CDF to rounding and Newton's method converges in a few steps. Pure numpy: no scipy import on the weights probe's hot path.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    c, r = (lo + hi) / 2, (hi - lo) / 2
    nodes, weights = np.polynomial.legendre.leggauss(24)

    def integrand(theta: np.ndarray) -> np.ndarray:  # density(x) |dx/dtheta|, written to be finite at beta=1
        # x = lo + 2 r k^2 and sin^2(theta) = 4 s^2 k^2 with k = cos(theta/2), s = sin(theta/2)
        k2 = np.cos(np.asarray(theta) / 2) ** 2
        s2 = np.sin(np.asarray(theta) / 2) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(k2 > 0, k2 / (lo + 2 * r * k2), 0.0 if lo > 0 else 1 / (2 * r))
        return 4 * r * r * s2 * ratio / (2 * math.pi * beta)

    def cdf(theta: float) -> float:  # P(X <= c + r cos(theta)) = integral from theta to pi
        # graded panels towards theta = pi, where 1/x varies on a scale sqrt(lo / r) when beta -> 1
        width = math.pi - theta
        edges = [theta]
        while width > 1e-15:
            width *= 0.25
            edges.append(math.pi - width)
        a, b = np.array(edges[:-1]), np.array(edges[1:])
        half = (b - a)[:, None] / 2
        return float(np.sum(half * weights * integrand(a[:, None] + half * (nodes + 1))))

    grid = np.linspace(0.0, math.pi, 257)
    values = np.array([cdf(t) for t in grid])  # decreasing from 1 to 0
    theta = float(np.interp(0.5, values[::-1], grid[::-1]))
    for _ in range(50):
        step = (cdf(theta) - 0.5) / float(integrand(np.array(theta)))  # d cdf / d theta = -integrand
        theta = min(max(theta + step, 0.0), math.pi)
        if abs(step) < 1e-15:
            break
    return float(c + r * math.cos(theta))


def _gd_omega(beta: float) -> float:
    """Gavish-Donoho omega(beta) ~ 0.56 b^3 - 0.95 b^2 + 1.82 b + 1.43 (their cubic fit, unknown noise)."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def marchenko_pastur(
    singular_values: np.ndarray, shape: tuple[int, int], *, tw_quantile: float = TW1_QUANTILE_99
) -> MPFit:
    """Robust MP bulk edge and spike count of one matrix from its full singular spectrum.

    Noise: for W = s Z, sigma_median ~ s sqrt(N mu_beta) where mu_beta is the exact MP median
    (:func:`mp_median`; this is the quantity behind Gavish-Donoho's omega(beta)), so
    s = sigma_median / sqrt(N mu_beta), robust to a few spikes. Edge: s (sqrt N + sqrt M).
    Margin: Johnstone's Tracy-Widom scaling of the largest eigenvalue, lambda_max ~ mu + sigma_J TW1 with
    mu = (sqrt N + sqrt M)^2 and sigma_J = (sqrt N + sqrt M)(1/sqrt N + 1/sqrt M)^(1/3), carried to
    singular values: margin = s * tw_quantile * (1/sqrt N + 1/sqrt M)^(1/3) / 2 (99% quantile by default,
    so a pure-noise matrix reports a spike with probability ~1%).
    """
    s = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    n, m = max(shape), min(shape)
    if s.size != m:
        raise ValueError(f"need all {m} singular values of a {shape} matrix, got {s.size}")
    beta = m / n
    med = float(np.median(s))
    noise = med / math.sqrt(n * mp_median(beta))
    edge = noise * (math.sqrt(n) + math.sqrt(m))
    margin = noise * tw_quantile * 0.5 * (1 / math.sqrt(n) + 1 / math.sqrt(m)) ** (1 / 3)
    n_spikes = int(np.count_nonzero(s > edge + margin))
    return MPFit(noise, edge, n_spikes, margin, beta, _gd_omega(beta) * med)
