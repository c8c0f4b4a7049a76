"""Per-matrix weight-spectrum metrics (ranks, norms, conditioning, entropy, power-law alpha, MP edge).

The MP statistics are computed in ``weights.marchenko``, the summary over matrices in ``weights.summary``.

Notation: W is N x M with N >= M (shapes are oriented internally), sigma descending (min(N, M) values),
lambda = sigma^2, p = lambda / sum(lambda).

WeightWatcher 0.7.7 conventions (its ``analyze()`` defaults; see ``tests/weights/test_weightwatcher_compat.py``):
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

import numpy as np
from hessian_spectra.weights.marchenko import marchenko_pastur
from hessian_spectra.weights.powerlaw import PowerLawFit, fit_power_law
from hessian_spectra.weights.svd_partial import PartialSpectrum

__all__ = [
    "MatrixMetrics",
    "PowerLawFit",
    "compute_metrics",
    "fit_power_law",
]

DEFAULT_RENYI_ORDERS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, math.inf)


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
