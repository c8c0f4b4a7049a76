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
``None`` (never a guess), and ``null_reasons`` says why for every metric that is ``None`` or infinite.

Scale: the spectrum is handled as ``s * 2**e`` with max(s) in [0.5, 1) (see
:func:`hessian_spectra.weights.svd.scaled_singular_values`): ratios come from ``s`` alone, logs add
``e log10 2``, and norms are scaled back one by one, so entries anywhere in 1e-300..1e300 give the
same ranks, condition numbers and alpha as at scale 1; a norm outside float64's range is ``None`` with
its log10 in the reason. Singular values at or below ``numerical_rank_tol`` are not resolved in the
computing dtype: they never enter the power-law fit, and a condition number they would set is infinite.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from hessian_spectra.weights.marchenko import marchenko_pastur
from hessian_spectra.weights.powerlaw import PowerLawFit, fit_power_law, fit_power_law_log
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
    spectrum: str  # "full" | "partial" | "nonfinite" | "zero"
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
    null_reasons: dict[str, str] = field(default_factory=dict)  # metric -> why it is None (or infinite)

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


#: Fields that are metrics (everything but identity, warnings and bookkeeping).
METRIC_FIELDS: tuple[str, ...] = (
    *SCALAR_METRICS,
    "renyi_ranks",
    "numerical_rank_tol",
    "numerical_rank_dtype",
    "xmin",
)
LOG10_2 = math.log10(2.0)


def _none_metrics(
    name: str, shape: tuple[int, int], spectrum: str, dtype: str, warns: list[str], n_nonfinite: int,
    reason: str, reasons: dict[str, str] | None = None, **known,
) -> MatrixMetrics:  # fmt: skip
    """A row where every metric not in ``known`` is None for ``reason`` (or its entry in ``reasons``)."""
    kw = {f.name: None for f in fields(MatrixMetrics)}
    kw.update(
        name=name, shape=shape, spectrum=spectrum, dtype=dtype, warnings=tuple(warns), n_nonfinite=n_nonfinite
    )
    kw.update(known)
    reasons = reasons or {}
    kw["null_reasons"] = {
        k: reasons.get(k, reason) for k in METRIC_FIELDS
        if (v := kw[k]) is None or (isinstance(v, float) and not math.isfinite(v)) or k in reasons
    }  # fmt: skip
    return MatrixMetrics(**kw)


def _scaled_back(value: float, e: int, label: str, reasons: dict[str, str]) -> float | None:
    """``value * 2**e`` when it is a normal float64 (or exactly 0); else None with the log10 in ``reasons``."""
    if value == 0.0:
        return 0.0
    try:
        out = math.ldexp(value, e)
    except OverflowError:
        out = math.inf
    if math.isinf(out) or abs(out) < sys.float_info.min:
        log10 = math.log10(abs(value)) + e * LOG10_2
        reasons[label] = f"outside float64's normal range (log10 = {log10:.6g})"
        return None
    return out


def _zero_metrics(name: str, shape: tuple[int, int], dtype: str, n_nonfinite: int) -> MatrixMetrics:
    """A zero matrix: norms and ranks are 0; ratios (0/0), logs (log 0) and fits are undefined."""
    return _none_metrics(
        name, shape, "zero", dtype, ["zero matrix: every singular value is 0"], n_nonfinite,
        "undefined for a zero matrix (0/0, log 0 or no eigenvalue to fit)",
        sigma_max=0.0, sigma_min=0.0, frobenius_norm=0.0, nuclear_norm=0.0, numerical_rank=0,
        numerical_rank_tol=0.0, numerical_rank_dtype=dtype,
    )  # fmt: skip


def compute_metrics(
    singular_values: np.ndarray | None,
    shape: tuple[int, int],
    *,
    name: str = "",
    dtype: str = "float64",
    partial: PartialSpectrum | None = None,
    renyi_orders: Sequence[float] = DEFAULT_RENYI_ORDERS,
    n_nonfinite: int = 0,
    exponent: int = 0,
) -> MatrixMetrics:
    """All metrics of one matrix from its full singular spectrum, or the computable subset from ``partial``.

    The true singular values are ``singular_values * 2**exponent`` (``exponent`` from
    :func:`hessian_spectra.weights.svd.scaled_singular_values`; 0 for plain values). ``dtype`` is the
    precision they were computed in; it sets the numerical-rank tolerance sigma_1 * max(N, M) *
    eps(dtype) (numpy/WeightWatcher convention). Non-finite singular values (a matrix with NaN/Inf
    entries) give a row of ``None`` with a warning, never an exception; a zero matrix gives spectrum
    ``"zero"`` with its norms and ranks (0) and the rest undefined.
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
        return _none_metrics(
            name, shape, "nonfinite", dtype, warns, n_nonfinite, "matrix has NaN/Inf entries"
        )
    if s.size != m:
        raise ValueError(f"{name or 'matrix'}: expected {m} singular values for shape {shape}, got {s.size}")
    if s.size == 0 or s[0] <= 0:
        return _zero_metrics(name, shape, dtype, n_nonfinite)
    e0 = math.frexp(float(s[0]))[1]
    s = np.ldexp(s, -e0)  # exact: max(s) in [0.5, 1), so nothing below can overflow
    e = int(exponent) + e0
    reasons: dict[str, str] = {}

    with np.errstate(under="ignore"):
        lam = s * s  # values below ~1e-154 * sigma_max underflow to 0: below eps^2 of the sums they enter
    lam_sum = float(lam.sum())
    p = lam / lam_sum
    q = s / s.sum()
    tol = float(s[0]) * n * float(np.finfo(np.dtype(dtype)).eps)
    rank = int(np.count_nonzero(s > tol))
    n_bottom = max(1, math.ceil(0.1 * s.size))
    smin = float(s[-1])
    mean_bottom = float(np.mean(s[-n_bottom:]))
    singular = "numerically singular: sigma_min <= numerical_rank_tol (sigma_1 max(N, M) eps)"
    if smin <= tol:
        warns.append(f"{singular}; condition number is infinite")
        reasons["condition_number"] = f"infinite: {singular}"
    if mean_bottom <= tol:
        reasons["modified_condition_number"] = "infinite: the bottom 10% of singular values are not resolved"
    entropy = _entropy(p) / math.log(rank) if rank > 1 else None
    if entropy is None:
        warns.append("numerical rank <= 1: spectral entropy undefined")
        reasons["spectral_entropy"] = "undefined: numerical rank <= 1 (normalised by ln(rank))"

    resolved = s[s > tol]
    with np.errstate(over="ignore", under="ignore"):  # lambda itself only for an exact xmin when in range
        fit = fit_power_law_log(
            2.0 * (np.log(resolved) + e * math.log(2.0)), values=np.ldexp(resolved**2, 2 * e)
        )
    fit_note = fit.warning
    if fit.alpha is None and resolved.size < s.size:
        fit_note = f"{fit.warning}; {s.size - resolved.size} singular value(s) at or below numerical_rank_tol left out"
    if fit_note:
        warns.append(f"alpha: {fit_note}")
    alpha = fit.alpha
    log_spec = 2.0 * (math.log10(float(s[0])) + e * LOG10_2)
    log_alpha_norm = None
    if alpha is not None:
        with np.errstate(under="ignore"):
            log_alpha_norm = alpha * log_spec + math.log10(float(np.sum((lam / lam[0]) ** alpha)))
    else:
        why = f"power-law alpha {fit_note}"
        for key in ("alpha", "alpha_weighted", "log_alpha_norm", "sigma_alpha"):
            reasons[key] = why
        for key in ("xmin", "n_tail", "ks_distance"):
            if getattr(fit, key) is None:
                reasons[key] = why
    if fit.xmin is None and fit.log_xmin is not None:
        reasons["xmin"] = f"outside float64's normal range (log10 = {fit.log_xmin / math.log(10):.6g})"
    mp = marchenko_pastur(s, shape) if m >= 2 else None
    if mp is None:
        for key in ("mp_noise_sigma", "mp_bulk_edge", "mp_n_spikes"):
            reasons[key] = "undefined for a single singular value (needs a bulk)"

    out = MatrixMetrics(
        name=name,
        shape=shape,
        spectrum="full",
        dtype=dtype,
        sigma_max=_scaled_back(float(s[0]), e, "sigma_max", reasons),
        sigma_min=_scaled_back(smin, e, "sigma_min", reasons),
        frobenius_norm=_scaled_back(math.sqrt(lam_sum), e, "frobenius_norm", reasons),
        nuclear_norm=_scaled_back(float(s.sum()), e, "nuclear_norm", reasons),
        stable_rank=lam_sum / float(lam[0]),
        participation_ratio=lam_sum**2 / float(np.sum(lam * lam)),
        soft_rank=math.exp(_entropy(p)),
        renyi_ranks={_order_key(a): renyi_rank(p, a) for a in renyi_orders},
        effective_rank=math.exp(_entropy(q)),
        numerical_rank=rank,
        numerical_rank_tol=_scaled_back(tol, e, "numerical_rank_tol", reasons),
        numerical_rank_dtype=dtype,
        condition_number=float(s[0]) / smin if smin > tol else math.inf,
        modified_condition_number=float(s[0]) / mean_bottom if mean_bottom > tol else math.inf,
        spectral_entropy=entropy,
        alpha=alpha,
        xmin=fit.xmin,
        n_tail=fit.n_tail,
        sigma_alpha=fit.sigma_alpha,
        ks_distance=fit.ks_distance,
        alpha_weighted=None if alpha is None else alpha * log_spec,
        log_norm=math.log10(lam_sum) + 2 * e * LOG10_2,
        log_spectral_norm=log_spec,
        log_alpha_norm=log_alpha_norm,
        mp_noise_sigma=None if mp is None else _scaled_back(mp.noise_sigma, e, "mp_noise_sigma", reasons),
        mp_bulk_edge=None if mp is None else _scaled_back(mp.bulk_edge, e, "mp_bulk_edge", reasons),
        mp_n_spikes=None if mp is None else mp.n_spikes,
        warnings=tuple(warns),
        n_nonfinite=n_nonfinite,
        null_reasons=reasons,
    )
    _check_reasons(out)
    return out


def _check_reasons(mm: MatrixMetrics) -> None:
    """Every metric that is None or infinite must say why (a null without a reason is a bug here)."""
    missing = [
        k for k in METRIC_FIELDS
        if (v := getattr(mm, k)) is None or (isinstance(v, float) and not math.isfinite(v))
        if k not in mm.null_reasons
    ]  # fmt: skip
    if missing:
        raise AssertionError(f"{mm.name}: metrics {missing} are null without a stated reason")


def _partial_metrics(
    ps: PartialSpectrum, name: str, shape: tuple[int, int], n_nonfinite: int
) -> MatrixMetrics:
    """Metrics that a top/bottom-k spectrum plus the exact Frobenius norm determine; the rest None.

    Ratios are formed before squaring (``(||W||_F / sigma_max)^2``) so 1e300-scale matrices stay finite.
    """
    warns: list[str] = [f"partial spectrum ({ps.which}, {ps.method}): full-spectrum metrics not computed"]
    if n_nonfinite or not math.isfinite(ps.frobenius_norm):
        warns.append("matrix has non-finite entries; no metrics computed")
        return _none_metrics(
            name, shape, "nonfinite", ps.dtype, warns, n_nonfinite, "matrix has NaN/Inf entries"
        )
    fro = ps.frobenius_norm
    if fro == 0.0:
        return _zero_metrics(name, shape, ps.dtype, n_nonfinite)
    reasons: dict[str, str] = {}
    unconverged = "partial spectrum did not converge (residuals above its tolerance)"
    if not ps.converged:
        warns.append("partial spectrum did not converge: values derived from it are None")
    r, n = min(shape), max(shape)
    top = ps.top if ps.converged else None
    bot = ps.bottom if ps.converged else None
    smax = float(top[0]) if top is not None else None
    smin = float(bot[-1]) if bot is not None else None
    for key, have, part in (("sigma_max", top, "top"), ("sigma_min", bot, "bottom")):
        if have is None:
            reasons[key] = (
                unconverged if getattr(ps, part) is not None else f"needs the {part}-k singular values"
            )
    if smax is None:
        for key in ("stable_rank", "log_spectral_norm"):
            reasons[key] = reasons["sigma_max"]
    kappa = mod_kappa = None
    if smax is not None and smin is not None:
        tol = smax * n * float(np.finfo(np.dtype(ps.dtype)).eps)
        kappa = smax / smin if smin > tol else math.inf
        if smin <= tol:
            reasons["condition_number"] = "infinite: numerically singular: sigma_min <= sigma_1 max(N, M) eps"
        n_bottom = max(1, math.ceil(0.1 * r))
        if bot.size >= n_bottom:
            mean_b = float(np.mean(bot[-n_bottom:]))
            mod_kappa = smax / mean_b if mean_b > tol else math.inf
            if mean_b <= tol:
                reasons["modified_condition_number"] = (
                    "infinite: the bottom 10% of singular values are not resolved"
                )
        else:
            reasons["modified_condition_number"] = (
                f"needs the bottom ceil(10%) = {n_bottom} singular values; {bot.size} were computed"
            )
    else:
        reasons["condition_number"] = reasons.get("sigma_min") or reasons["sigma_max"]
        reasons["modified_condition_number"] = reasons["condition_number"]
    return _none_metrics(
        name, shape, "partial", ps.dtype, warns, n_nonfinite,
        "needs the full spectrum (only top/bottom-k singular values were computed)", reasons,
        sigma_max=smax, sigma_min=smin, frobenius_norm=fro,
        stable_rank=None if not smax else (fro / smax) ** 2,
        condition_number=kappa, modified_condition_number=mod_kappa,
        log_norm=2 * math.log10(fro), log_spectral_norm=2 * math.log10(smax) if smax else None,
    )  # fmt: skip
