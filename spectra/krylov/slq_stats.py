"""Uncertainty of what SLQ estimates: the trace (plain or Krylov-deflated), the spectral mass below a
threshold and statistics that are not means over probes (bootstrap). Every function takes an
:class:`hessian_spectra.krylov.slq.SLQResult` and returns an :class:`~hessian_spectra.krylov.intervals.Interval`.

Per probe v (normalised Rademacher or Gaussian), m Lanczos steps give nodes theta_i and weights tau_i; the
quadrature sum_i tau_i f(theta_i) is v^T f(A) v exactly for polynomials of degree < 2m. Both probe kinds
make n v^T A v unbiased for tr(A) (sign vectors: it is z^T A z; normalised Gaussians are uniform on the
sphere, E[v v^T] = I/n), so the per-probe values are iid and Student t applies. Details:
spectra/docs/uncertainty.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.intervals import (
    DEFAULT_LEVEL,
    Interval,
    bootstrap_interval,
    exact_interval,
    t_interval,
    t_quantile,
    variance_bound,
)

if TYPE_CHECKING:
    from hessian_spectra.krylov.density import SpectralDensity
    from hessian_spectra.krylov.slq import SLQResult

__all__ = [
    "DensityBand",
    "density_band",
    "TRACE_METHODS",
    "trace_interval",
    "mass_below",
    "negative_share",
    "bootstrap",
    "uncertainty_fields",
]

#: ``auto``: exact when known, else deflated (when the first probe's basis was kept and >= 3 probes), else
#: plain; ``plain``: the mean of n v^T A v over probes (the ``trace`` field); ``deflated``: see
#: :mod:`hessian_spectra.krylov.deflation`.
TRACE_METHODS = ("auto", "plain", "deflated")


def _chance_agreement(probe: str, n: int) -> float:
    """Probability bound that ``n`` probes all see one eigenvalue of an operator that is not a multiple of
    the identity: 0 for Gaussian probes; 2^-(n-1) for sign vectors (each lands in a proper subspace with
    probability <= 1/2 given the first)."""
    return 0.0 if probe == "gaussian" else 2.0 ** (-(n - 1))


def trace_interval(res: SLQResult, level: float = DEFAULT_LEVEL, method: str = "auto") -> Interval:
    """The trace with a ``level`` confidence interval (see :data:`TRACE_METHODS`)."""
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {', '.join(TRACE_METHODS)}, got {method!r}")
    n_p = res.num_probes
    defl = res.deflation
    if res.exact or res.dim == 1:
        return exact_interval(res.trace, n_p, "exact" if res.exact else "slq", level)
    if method != "plain" and defl is not None and defl.full:
        return exact_interval(defl.top, n_p, "slq-krylov", level)
    if method == "deflated" and (defl is None or n_p < 3):
        raise ValueError(
            "a deflated trace needs the first probe's basis (reorthogonalize=True) and >= 3 probes"
        )
    samples = res.trace_samples
    plain = t_interval(
        samples, level=level, rounding=res.rounding,
        variance_bound=variance_bound(res.second_moments, float(samples.mean()), res.dim, res.eps),
        chance_agreement=_chance_agreement(res.probe, n_p), estimator="slq", skew_guard=True,
    )  # fmt: skip
    # every probe an eigenvector of one eigenvalue (A = c I on them): the plain samples are exact, while the
    # residuals of projected probes (no longer sign vectors) are not, so deflating would only add noise
    if method == "plain" or defl is None or n_p < 3 or (method == "auto" and plain.method == "certificate"):
        return plain
    r = defl.residuals(samples)
    moments = defl.residual_moments(res.second_moments)
    scale = float(np.max(res.second_moments)) if res.second_moments is not None else 0.0
    bound = variance_bound(
        res.second_moments if moments is None else moments, float(r.mean()), res.dim, res.eps, scale=scale
    )
    return t_interval(
        r, level=level, offset=defl.top, rounding=res.rounding, variance_bound=bound,
        chance_agreement=_chance_agreement(res.probe, r.size) if moments is not None else None,
        estimator="slq-deflated", skew_guard=True,
    )  # fmt: skip


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def mass_below(
    res: SLQResult, threshold: float = 0.0, sigma: float | None = None, level: float = DEFAULT_LEVEL
) -> Interval:
    """The fraction of the spectrum below ``threshold``.

    ``sigma`` None: of the smoothed density SLQ reports (its default kernel width), i.e. the exact value
    is (1/n) sum_j Phi((threshold - lambda_j) / sigma); a mean over probes of sum_i tau_i Phi(...), so a t
    interval. ``sigma`` = 0: the hard count #{lambda_j < threshold} / n; each probe's quadrature only
    brackets it (Chebyshev-Markov-Stieltjes: between the weights of the nodes below the node just under
    the threshold and those up to the node just above it), so the interval joins the t bounds of both
    bracket ends (conservative; method ``t``, estimate = mean of the bracket midpoints).
    """
    w, x = res.weights, res.nodes
    if sigma is None:
        sigma = res.density_sigma()
    ev = res.exact_eigenvalues()
    if ev is not None:
        f = _normal_cdf((threshold - ev) / sigma) if sigma > 0 else (ev < threshold).astype(np.float64)
        return exact_interval(float(f.mean()), res.num_probes, "exact-eigenvalues", level)
    if sigma > 0:
        per = np.sum(w * _normal_cdf((threshold - x) / sigma), axis=1)
        return _clip01(_mass_t(per, res, level, f"slq-smoothed(sigma={sigma:.4g})"))
    lo = np.empty(res.num_probes)
    hi = np.empty(res.num_probes)
    for j in range(res.num_probes):
        k = res.steps_taken[j]
        th, tw = x[j, :k], w[j, :k]
        below = th < threshold
        lo[j] = float(tw[below].sum())
        hi[j] = lo[j]
        if below.any():  # the node just below the threshold may carry mass on either side of it
            lo[j] -= float(tw[below][np.argmax(th[below])])
        if (~below).any():  # and so may the node just above
            hi[j] += float(tw[~below][np.argmin(th[~below])])
    a, b = _mass_t(lo, res, level, ""), _mass_t(hi, res, level, "")
    est = 0.5 * (a.estimate + b.estimate)
    methods = {a.method, b.method}
    method = "unbounded" if "unbounded" in methods else a.method if len(methods) == 1 else "t-bound"
    return _clip01(Interval(est, max(a.stderr, b.stderr), a.ci_low, b.ci_high, a.level, res.num_probes, method,
                            a.dof, "slq-hard-count"))  # fmt: skip


#: Rounding of a spectral mass (a sum of weights that add up to 1).
_MASS_ROUNDING = 1e-14


def _mass_t(per: np.ndarray, res: SLQResult, level: float, estimator: str) -> Interval:
    """t interval of per-probe masses v^T f(A) v, 0 <= f <= 1: one probe's variance is at most
    2 mu (1 - mu) / n (the trace bound with ||f(A)||_F^2 <= tr f(A)), used when every probe agrees."""
    mu = min(max(float(per.mean()), 0.0), 1.0)
    return t_interval(
        per, level=level, rounding=_MASS_ROUNDING, variance_bound=2.0 * mu * (1.0 - mu) / res.dim,
        chance_agreement=_chance_agreement(res.probe, per.size), estimator=estimator,
    )  # fmt: skip


def _clip01(iv: Interval) -> Interval:
    """A mass interval clipped to [0, 1]."""
    return replace(iv, ci_low=max(iv.ci_low, 0.0), ci_high=min(iv.ci_high, 1.0))


def negative_share(
    res: SLQResult, level: float = DEFAULT_LEVEL, n_boot: int = 2000, seed: int = 0
) -> Interval:
    """sum_{lambda < 0} |lambda| / sum |lambda|: the share of absolute curvature that is negative. A ratio of
    two means over probes, not a mean: bootstrap over probes (zero eigenvalues weigh nothing, so the null
    space of a Hessian does not blur it the way a count of negative eigenvalues is blurred)."""
    ev = res.exact_eigenvalues()
    if ev is not None:
        tot = float(np.abs(ev).sum())
        share = float(np.maximum(-ev, 0.0).sum()) / tot if tot > 0 else math.nan
        return exact_interval(share, res.num_probes, "exact-eigenvalues", level)
    neg = np.sum(res.weights * np.maximum(-res.nodes, 0.0), axis=1)
    tot = np.sum(res.weights * np.abs(res.nodes), axis=1)
    data = np.stack([neg, tot], axis=1)

    def stat(resamples: np.ndarray) -> np.ndarray:  # (n_boot, probes, 2) -> ratio of the column sums
        sums = resamples.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], np.nan)

    return bootstrap_interval(data, stat, level=level, n_boot=n_boot, seed=seed, rounding=_MASS_ROUNDING,
                              estimator="slq-ratio", batched=True)  # fmt: skip


def bootstrap(
    res: SLQResult,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    level: float = DEFAULT_LEVEL,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """A bootstrap interval over probes for ``statistic(nodes, weights)`` (rows = probes, as in
    :class:`~hessian_spectra.krylov.slq.SLQResult`)."""
    m = res.nodes.shape[1]
    data = np.concatenate([res.nodes, res.weights], axis=1)
    return bootstrap_interval(
        data, lambda rows: statistic(rows[:, :m], rows[:, m:]), level=level, n_boot=n_boot, seed=seed,
        estimator="slq-bootstrap",
    )  # fmt: skip


def uncertainty_fields(res: SLQResult, level: float = DEFAULT_LEVEL) -> dict[str, dict]:
    """What a report states about one SLQ result: ``trace_ci`` (the trace with its ``level`` interval,
    :func:`trace_interval`) and ``negative_mass`` (the reported smoothed density's mass below zero,
    :func:`mass_below`); each an :class:`~hessian_spectra.krylov.intervals.Interval` dict (estimate, stderr,
    ci_low, ci_high, level, probes, method, dof, estimator)."""
    return {
        "trace_ci": trace_interval(res, level).to_dict(),
        "negative_mass": mass_below(res, 0.0, None, level).to_dict(),
    }


@dataclass(frozen=True, eq=False)
class DensityBand:
    """A pointwise ``level`` band around a smoothed SLQ density: at each grid point the density is a mean
    over probes of sum_i tau_i g_sigma(t - theta_i), so Student t on ``probes - 1`` dof (pointwise, not
    simultaneous; ``low`` clipped at 0). ``method`` ``exact``: the eigenvalues are known, zero width."""

    grid: np.ndarray
    values: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    probes: int
    method: str

    def to_dict(self) -> dict:
        return json_safe({"ci_low": self.low, "ci_high": self.high, "level": self.level, "probes": self.probes,
                          "method": self.method, "pointwise": True})  # fmt: skip


def density_band(res: SLQResult, density: SpectralDensity, level: float = DEFAULT_LEVEL) -> DensityBand:
    """The pointwise band of ``density`` (one of ``res.density(...)``, same grid and kernel)."""
    from hessian_spectra.krylov.density import kernel_mixture

    ev = res.exact_eigenvalues()
    if ev is not None:
        exact = kernel_mixture(density.grid, ev, np.full(ev.size, 1.0 / ev.size), density.sigma, density.kind)
        return DensityBand(density.grid, exact, exact, exact, level, res.num_probes, "exact")
    per = np.stack([
        kernel_mixture(density.grid, res.nodes[j], res.weights[j], density.sigma, density.kind)
        for j in range(res.num_probes)
    ])  # fmt: skip
    mean = per.mean(axis=0)
    if res.num_probes < 2:
        inf = np.full_like(mean, np.inf)
        return DensityBand(density.grid, mean, np.zeros_like(mean), inf, level, res.num_probes, "unbounded")
    half = t_quantile(level, res.num_probes - 1) * per.std(axis=0, ddof=1) / math.sqrt(res.num_probes)
    return DensityBand(
        density.grid, mean, np.maximum(mean - half, 0.0), mean + half, level, res.num_probes, "t"
    )
