"""Per-matrix weight-spectrum metrics (ranks, norms, conditioning, entropy, power-law alpha, MP edge).

Notation: W is N x M with N >= M (shapes are oriented internally), sigma descending (min(N, M) values),
lambda = sigma^2, p = lambda / sum(lambda).

WeightWatcher 0.7.7 conventions (its ``analyze()`` defaults; see ``tests/test_weightwatcher_compat.py``):
W is *not* normalised; ``log_norm = log10(sum lambda) = log10(||W||_F^2)``; ``log_spectral_norm =
log10(lambda_max) = log10(sigma_max^2)``; ``alpha_weighted = alpha * log10(lambda_max)``;
``log_alpha_norm = log10(sum lambda^alpha)`` over all eigenvalues; ``stable_rank = sum lambda /
lambda_max``; ``spectral_entropy = -sum p ln p / ln(numerical rank)`` (ww adds 1e-10 to every p and to the
rank before this; we do not, which moves the value by ~M * 1e-10 * |ln 1e-10|); alpha from
:func:`hessian_spectra.weights.powerlaw.fit_power_law`. A metric that cannot be computed exactly from what is known is
``None`` (never a guess).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np
from hessian_spectra.weights.powerlaw import PowerLawFit, fit_power_law
from hessian_spectra.weights.svd import PartialSpectrum

__all__ = [
    "MPFit",
    "MatrixMetrics",
    "MetricSummary",
    "ModelSummary",
    "PowerLawFit",
    "compute_metrics",
    "fit_power_law",
    "marchenko_pastur",
    "mp_median",
    "summarize",
    "TW1_QUANTILE_99",
]

DEFAULT_RENYI_ORDERS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, math.inf)
TW1_QUANTILE_99 = 2.0234  # 99% quantile of the Tracy-Widom (beta=1) law (Johnstone 2001, table 1)


# --------------------------------------------------------------------------------------------------
# Marchenko-Pastur
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Per-matrix metrics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixMetrics:
    """One row per matrix. ``None`` = not computable from what is known (e.g. a partial spectrum)."""

    name: str
    shape: tuple[int, int]
    spectrum: str  # "full" | "partial" | "nonfinite"
    dtype: str
    sigma_max: float | None
    sigma_min: float | None
    frobenius_norm: float | None
    nuclear_norm: float | None
    stable_rank: float | None
    participation_ratio: float | None
    soft_rank: float | None
    renyi_ranks: dict[str, float] | None
    effective_rank: float | None
    numerical_rank: int | None
    numerical_rank_tol: float | None
    numerical_rank_dtype: str | None
    condition_number: float | None
    modified_condition_number: float | None
    spectral_entropy: float | None
    alpha: float | None
    xmin: float | None
    n_tail: int | None
    sigma_alpha: float | None
    ks_distance: float | None
    alpha_weighted: float | None
    log_norm: float | None
    log_spectral_norm: float | None
    log_alpha_norm: float | None
    mp_noise_sigma: float | None
    mp_bulk_edge: float | None
    mp_n_spikes: int | None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    n_nonfinite: int = 0

    def to_dict(self) -> dict:
        """JSON-safe dict (inf/NaN become None; e.g. the condition number of a singular matrix)."""
        from hessian_spectra.io import json_safe

        return json_safe(asdict(self))


SCALAR_METRICS: tuple[str, ...] = (
    "sigma_max", "sigma_min", "frobenius_norm", "nuclear_norm", "stable_rank", "participation_ratio",
    "soft_rank", "effective_rank", "numerical_rank", "condition_number", "modified_condition_number",
    "spectral_entropy", "alpha", "n_tail", "sigma_alpha", "ks_distance", "alpha_weighted", "log_norm",
    "log_spectral_norm", "log_alpha_norm", "mp_noise_sigma", "mp_bulk_edge", "mp_n_spikes",
)  # fmt: skip


def _entropy(q: np.ndarray) -> float:
    q = q[q > 0]
    return float(-np.sum(q * np.log(q)))


def renyi_rank(p: np.ndarray, order: float) -> float:
    """Renyi effective rank exp(H_a(p)) of a probability vector: a=0 support size, 1 Shannon, inf 1/max p."""
    p = p[p > 0]
    if order == 0:
        return float(p.size)
    if order == 1:
        return math.exp(_entropy(p))
    if math.isinf(order):
        return float(1.0 / p.max())
    return float(np.exp(np.log(np.sum(p**order)) / (1.0 - order)))


def _order_key(order: float) -> str:
    return "inf" if math.isinf(order) else f"{order:g}"


def _none_metrics(
    name: str, shape: tuple[int, int], spectrum: str, dtype: str, warns: list[str], n_nonfinite: int
) -> MatrixMetrics:
    kw = {f.name: None for f in fields(MatrixMetrics)}
    kw.update(
        name=name, shape=shape, spectrum=spectrum, dtype=dtype, warnings=tuple(warns), n_nonfinite=n_nonfinite
    )
    return MatrixMetrics(**kw)


def compute_metrics(
    singular_values: np.ndarray | None,
    shape: tuple[int, int],
    *,
    name: str = "",
    dtype: str = "float64",
    partial: PartialSpectrum | None = None,
    renyi_orders: Sequence[float] = DEFAULT_RENYI_ORDERS,
    n_nonfinite: int = 0,
) -> MatrixMetrics:
    """All metrics of one matrix from its full singular spectrum, or the computable subset from ``partial``.

    ``dtype`` is the precision the singular values were computed in; it sets the numerical-rank
    tolerance sigma_1 * max(N, M) * eps(dtype) (numpy/WeightWatcher convention). Non-finite singular
    values (a matrix with NaN/Inf entries) give a row of ``None`` with a warning, never an exception.
    """
    shape = (int(shape[0]), int(shape[1]))
    n, m = max(shape), min(shape)
    if singular_values is None:
        if partial is None:
            raise ValueError("give singular_values or partial")
        return _partial_metrics(partial, name, shape, n_nonfinite)
    s = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1]
    warns: list[str] = []
    if n_nonfinite or not np.all(np.isfinite(s)):
        warns.append(f"matrix has non-finite entries ({n_nonfinite} counted); no metrics computed")
        return _none_metrics(name, shape, "nonfinite", dtype, warns, n_nonfinite)
    if s.size != m:
        raise ValueError(f"{name or 'matrix'}: expected {m} singular values for shape {shape}, got {s.size}")
    if s.size == 0 or s[0] <= 0:
        warns.append("zero matrix: no spectrum")
        return _none_metrics(name, shape, "full", dtype, warns, n_nonfinite)

    lam = s * s
    lam_sum = float(lam.sum())
    lam_max = float(lam[0])
    p = lam / lam_sum
    q = s / s.sum()
    tol = float(s[0]) * n * float(np.finfo(np.dtype(dtype)).eps)
    rank = int(np.count_nonzero(s > tol))
    n_bottom = max(1, math.ceil(0.1 * s.size))
    smin = float(s[-1])
    if smin == 0.0:
        warns.append("singular matrix: condition number is infinite")
    entropy = _entropy(p) / math.log(rank) if rank > 1 else None
    if entropy is None:
        warns.append("numerical rank <= 1: spectral entropy undefined")

    fit = fit_power_law(lam)
    if fit.warning:
        warns.append(f"alpha: {fit.warning}")
    alpha = fit.alpha
    log_spec = math.log10(lam_max)
    log_alpha_norm = None
    if alpha is not None:
        log_alpha_norm = alpha * log_spec + math.log10(float(np.sum((lam / lam_max) ** alpha)))
    mp = marchenko_pastur(s, shape) if m >= 2 else None

    return MatrixMetrics(
        name=name,
        shape=shape,
        spectrum="full",
        dtype=dtype,
        sigma_max=float(s[0]),
        sigma_min=smin,
        frobenius_norm=math.sqrt(lam_sum),
        nuclear_norm=float(s.sum()),
        stable_rank=lam_sum / lam_max,
        participation_ratio=lam_sum**2 / float(np.sum(lam * lam)),
        soft_rank=math.exp(_entropy(p)),
        renyi_ranks={_order_key(a): renyi_rank(p, a) for a in renyi_orders},
        effective_rank=math.exp(_entropy(q)),
        numerical_rank=rank,
        numerical_rank_tol=tol,
        numerical_rank_dtype=dtype,
        condition_number=float(s[0]) / smin if smin > 0 else math.inf,
        modified_condition_number=float(s[0]) / float(np.mean(s[-n_bottom:]))
        if s[-n_bottom:].any()
        else math.inf,
        spectral_entropy=entropy,
        alpha=alpha,
        xmin=fit.xmin,
        n_tail=fit.n_tail,
        sigma_alpha=fit.sigma_alpha,
        ks_distance=fit.ks_distance,
        alpha_weighted=None if alpha is None else alpha * log_spec,
        log_norm=math.log10(lam_sum),
        log_spectral_norm=log_spec,
        log_alpha_norm=log_alpha_norm,
        mp_noise_sigma=None if mp is None else mp.noise_sigma,
        mp_bulk_edge=None if mp is None else mp.bulk_edge,
        mp_n_spikes=None if mp is None else mp.n_spikes,
        warnings=tuple(warns),
        n_nonfinite=n_nonfinite,
    )


def _partial_metrics(
    ps: PartialSpectrum, name: str, shape: tuple[int, int], n_nonfinite: int
) -> MatrixMetrics:
    """Metrics that a top/bottom-k spectrum plus the exact Frobenius norm determine; the rest None."""
    warns: list[str] = [f"partial spectrum ({ps.which}, {ps.method}): full-spectrum metrics not computed"]
    if n_nonfinite or not math.isfinite(ps.frobenius_norm):
        warns.append("matrix has non-finite entries; no metrics computed")
        return _none_metrics(name, shape, "nonfinite", ps.dtype, warns, n_nonfinite)
    if not ps.converged:
        warns.append("partial spectrum did not converge: values derived from it are None")
    r = min(shape)
    top = ps.top if ps.converged else None
    bot = ps.bottom if ps.converged else None
    smax = float(top[0]) if top is not None else None
    smin = float(bot[-1]) if bot is not None else None
    fro = ps.frobenius_norm
    lam_sum = fro * fro
    n_bottom = max(1, math.ceil(0.1 * r))
    mod_kappa = None
    if smax is not None and bot is not None and bot.size >= n_bottom:
        mean_b = float(np.mean(bot[-n_bottom:]))
        mod_kappa = smax / mean_b if mean_b > 0 else math.inf
    kw = {f.name: None for f in fields(MatrixMetrics)}
    kw.update(
        name=name,
        shape=shape,
        spectrum="partial",
        dtype=ps.dtype,
        sigma_max=smax,
        sigma_min=smin,
        frobenius_norm=fro,
        stable_rank=None if not smax else lam_sum / smax**2,
        condition_number=None if smax is None or smin is None else (smax / smin if smin > 0 else math.inf),
        modified_condition_number=mod_kappa,
        log_norm=math.log10(lam_sum) if lam_sum > 0 else None,
        log_spectral_norm=2 * math.log10(smax) if smax else None,
        warnings=tuple(warns),
        n_nonfinite=n_nonfinite,
    )
    return MatrixMetrics(**kw)


# --------------------------------------------------------------------------------------------------
# Model summary
# --------------------------------------------------------------------------------------------------

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
