"""Confidence intervals for estimates built from independent random probes.

Student t on ``probes - 1`` degrees of freedom for means over probes; a seeded bootstrap over probes
(Hesterberg's expanded percentile, calibrated for small probe counts) for statistics that are not means;
zero width only for exact values or a certificate. Probes that all agree (sample spread at the rounding
level) never give a zero-width interval on their own: see :func:`t_interval` and spectra/docs/uncertainty.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from hessian_spectra.io import json_safe

__all__ = [
    "DEFAULT_LEVEL",
    "Interval",
    "bootstrap_interval",
    "check_level",
    "exact_interval",
    "rounding_level",
    "t_interval",
    "t_quantile",
    "variance_bound",
]

#: The confidence level every estimate reports unless told otherwise.
DEFAULT_LEVEL = 0.95
#: Rounding of one probe's value is taken as this many units of eps x ||z|| x ||A z||.
ROUNDING_UNITS = 4.0


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval at ``level`` from ``probes`` probes.

    ``method``: ``exact`` (zero width: an exact value), ``t`` (Student t on the probes' sample spread,
    ``dof`` degrees of freedom), ``t-skew`` (``t`` widened for one-signed skewed samples), ``t-bound`` (Student t on a variance bound, used when every probe gave
    the same value), ``certificate`` (every probe was annihilated / an eigenvector: width = rounding),
    ``bootstrap`` (expanded-percentile bootstrap over probes), ``unbounded`` (nothing can be said:
    infinite bounds). ``estimator`` names what produced the estimate (e.g. ``slq``, ``slq-deflated``).
    """

    estimate: float
    stderr: float
    ci_low: float
    ci_high: float
    level: float
    probes: int
    method: str
    dof: int | None = None
    estimator: str = ""

    @property
    def half_width(self) -> float:
        return 0.5 * (self.ci_high - self.ci_low)

    def covers(self, value: float, atol: float = 0.0) -> bool:
        """True when ``value`` lies in [ci_low - atol, ci_high + atol]."""
        return bool(self.ci_low - atol <= value <= self.ci_high + atol)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def check_level(level: float) -> float:
    """``level`` as a float in (0, 1), else ValueError."""
    lv = float(level)
    if not (0.0 < lv < 1.0):
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return lv


def t_quantile(level: float, dof: int) -> float:
    """The two-sided Student-t quantile t_{(1+level)/2, dof}."""
    return _t_quantile(check_level(level), max(int(dof), 1))


@lru_cache(maxsize=1024)
def _t_quantile(level: float, dof: int) -> float:  # cached: a report asks for thousands of blocks
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.5 + 0.5 * level))


def rounding_level(eps: float, probe_norm: float, image_norm: float) -> float:
    """Rounding of one probe value z^T A z: :data:`ROUNDING_UNITS` x eps x ||z|| x ||A z|| (a dot
    product's error bound; the matvec's own rounding is of the same order)."""
    return ROUNDING_UNITS * float(eps) * float(probe_norm) * float(image_norm)


def variance_bound(
    second: Any, mean: float, dim: int, eps: float, centred: bool = True, scale: float = 0.0
) -> float | None:
    """An upper bound on the variance of one probe's z^T C z from per-probe ||C z||^2 (``second``, mean F2):
    2 (F2 - mean^2 / dim) for sign vectors and sphere-normalised Gaussians (``centred``), 2 F2 for plain
    Gaussians. None without second moments; 0 when it is below the rounding of the terms it came from
    (``scale``: their size when ``second`` are differences, e.g. ||A z||^2 - ||Q^T A z||^2)."""
    if second is None:
        return None
    f = np.asarray(second, dtype=np.float64).ravel()
    if f.size == 0:
        return None
    bound = 2.0 * max(float(f.mean()) - (mean * mean / max(dim, 1) if centred else 0.0), 0.0)
    return 0.0 if bound <= 64.0 * float(eps) * max(float(f.max()), float(scale)) else bound


def exact_interval(
    value: float, probes: int = 0, estimator: str = "exact", level: float = DEFAULT_LEVEL
) -> Interval:
    """A zero-width interval: ``value`` is exact (up to floating-point rounding)."""
    v = float(value)
    return Interval(v, 0.0, v, v, check_level(level), int(probes), "exact", None, estimator)


def _unbounded(estimate: float, n: int, level: float, estimator: str) -> Interval:
    return Interval(float(estimate), math.inf, -math.inf, math.inf, level, n, "unbounded", None, estimator)


def t_interval(
    samples: Any,
    *,
    level: float = DEFAULT_LEVEL,
    offset: float = 0.0,
    rounding: float = 0.0,
    variance_bound: float | None = None,
    chance_agreement: float | None = None,
    estimator: str = "",
    skew_guard: bool = False,
) -> Interval:
    """``offset + mean(samples)`` with a Student-t interval on ``len(samples) - 1`` dof.

    ``skew_guard`` (for quadratic forms z^T C z): when every sample has the same sign, the interval is
    widened to also cover the scaled chi-square law with moment-matched degrees of freedom (Satterthwaite:
    nu = 2 n mean^2 / s^2), the law of a mean of quadratic forms of a low-rank semidefinite C, whose
    right-skewed samples make the t interval too short (method ``t-skew`` when this widened it).

    ``offset`` is a part known exactly (Hutch++'s sketched trace). ``stderr`` is never below
    ``rounding`` (one sample's rounding). When the sample spread is at the rounding level (every probe
    agreed, e.g. a diagonal block probed with signs) it says nothing about the variance, so:
    ``variance_bound`` (an upper bound on one sample's variance) gives ``t-bound``; a bound at the
    rounding level means every probe saw the same eigenvalue, accepted as ``certificate`` only when
    ``chance_agreement`` (the probability that the probes agree by chance when the estimate is not
    exact) is at most ``1 - level``; otherwise the interval is ``unbounded``.
    """
    lv = check_level(level)
    x = np.asarray(samples, dtype=np.float64).ravel()
    n = int(x.size)
    if n == 0:
        raise ValueError("t_interval needs at least one sample")
    est = float(offset) + float(x.mean())
    floor = max(float(rounding), 0.0)
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    dof = max(n - 1, 1)
    if n > 1 and sd / math.sqrt(n) > floor:
        se, method = sd / math.sqrt(n), "t"
    elif (
        variance_bound is not None
        and math.isfinite(variance_bound)
        and math.sqrt(max(variance_bound, 0.0) / n) > floor
    ):
        se, method = math.sqrt(variance_bound / n), "t-bound"
    elif (
        n > 1 and variance_bound is not None and chance_agreement is not None and chance_agreement <= 1.0 - lv
    ):
        se, method = floor, "certificate"
    else:
        return _unbounded(est, n, lv, estimator)
    half = t_quantile(lv, dof) * se
    lo, hi = est - half, est + half
    if skew_guard and method == "t" and (bool(np.all(x > 0)) or bool(np.all(x < 0))):
        a, b = _chi2_bounds(x, lv)
        if a < lo - 1e-15 * abs(lo) or b > hi + 1e-15 * abs(hi):
            lo, hi, method = min(lo, offset + a), max(hi, offset + b), "t-skew"
    return Interval(est, se, lo, hi, lv, n, method, dof, estimator)


def _chi2_bounds(x: np.ndarray, level: float) -> tuple[float, float]:
    """Bounds for E[x] when n * mean / E[x] ~ chi2_nu / nu * n (Satterthwaite, nu = 2 n mean^2 / s^2),
    for one-signed samples (negative ones mirrored)."""
    from scipy.special import gammaincinv  # chi2 quantile(p, nu) = 2 gammaincinv(nu / 2, p); a fast ufunc

    sign = 1.0 if x[0] > 0 else -1.0
    m = float(np.mean(sign * x))
    nu = 2.0 * x.size * m * m / float(np.var(x, ddof=1))
    tail = 0.5 * (1.0 - level)
    lo = nu * m / (2.0 * float(gammaincinv(0.5 * nu, 1.0 - tail)))
    hi = nu * m / (2.0 * float(gammaincinv(0.5 * nu, tail)))
    return (lo, hi) if sign > 0 else (-hi, -lo)


def _expanded_alpha(level: float, n: int) -> float:
    """Hesterberg's expanded-percentile tail: Phi(-sqrt(n/(n-1)) t_{(1+level)/2, n-1}) per side; it makes
    the percentile interval of a mean as wide as the t interval (the plain one under-covers at small n)."""
    from scipy.special import ndtr

    z = math.sqrt(n / (n - 1)) * t_quantile(level, n - 1)
    return float(ndtr(-z))


def bootstrap_interval(
    data: Any,
    statistic: Callable[[np.ndarray], float],
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = 2000,
    seed: int = 0,
    rounding: float = 0.0,
    estimator: str = "",
    batched: bool = False,
) -> Interval:
    """A bootstrap interval over probes: ``data`` has one row per probe (first axis), ``statistic(rows)``
    maps a resample of rows to a number (``batched``: maps a stack of resamples, shape (n_boot, probes,
    ...), to n_boot numbers at once). Expanded percentile interval (:func:`_expanded_alpha`), seeded;
    ``stderr`` is the bootstrap standard deviation, never below ``rounding``; a statistic whose resamples
    all agree to rounding has no interval (``unbounded``)."""
    lv = check_level(level)
    arr = np.asarray(data)
    n = int(arr.shape[0])
    if n == 0:
        raise ValueError("bootstrap_interval needs at least one probe")
    est = float(np.asarray(statistic(arr[None]))[0]) if batched else float(statistic(arr))
    if n < 2:
        return _unbounded(est, n, lv, estimator)
    rng = np.random.default_rng(int(seed))
    idx = rng.integers(0, n, size=(int(n_boot), n))
    if batched:
        reps = np.asarray(statistic(arr[idx]), dtype=np.float64).ravel()
    else:
        reps = np.array([float(statistic(arr[i])) for i in idx])
    reps = reps[np.isfinite(reps)]
    if reps.size < max(10, n_boot // 2):
        return _unbounded(est, n, lv, estimator)
    sd = float(reps.std(ddof=1))
    if not sd > max(float(rounding), 0.0):
        return _unbounded(est, n, lv, estimator)
    a = _expanded_alpha(lv, n)
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return Interval(est, sd, float(min(lo, est)), float(max(hi, est)), lv, n, "bootstrap", None, estimator)
