"""WeightWatcher-compatible continuous power-law fit of an eigenvalue tail, vectorised over every xmin.

Definitions replicated from weightwatcher 0.7.7 (``WW_powerlaw.WWFit``, the default ``pl_package="ww"``,
``fix_fingers=False``, ``xmax=None``), written independently:

* data = sorted eigenvalues strictly above ``thresh`` (1e-5, ww's ``EVALS_THRESH`` on CPU); no
  normalisation of W, nothing clipped at the top.
* candidates: every data point except the largest. For candidate i with tail size n = N - i,
  ``alpha_i = 1 + n / sum_{j >= i} ln(x_j / x_i)`` (continuous MLE) and
  ``D_i = max_{j >= i} |1 - (x_j/x_i)^(1 - alpha_i) - (j - i)/n|`` (KS distance against the empirical CDF
  evaluated at the left end of each step); D_i = 1 when alpha_i <= 1.
* xmin = the first candidate with the smallest D; sigma_alpha = (alpha - 1)/sqrt(n).
* N < 20 ("small N"): bias-corrected ``alpha = 1 + (n - 1)/s``, only tails with n >= 8, s > 1e-12 and
  alpha > 1, chosen by the smallest D (ww computes a ``D - 0.868/sqrt(n)`` objective but its ``WWFit``
  constructor then overrides that choice with ``argmin(D)``, which is what it reports); with no such tail
  the whole sample is used.
* warning "over-trained" when alpha < 2, "under-trained" when alpha > 6.

Differences from ww (documented, deliberate): fewer than 2 eigenvalues above ``thresh`` returns
alpha=None (ww: an exception/``-1``, or alpha=1.0 for exactly one); in the small-N whole-sample fallback
sigma_alpha is (alpha-1)/sqrt(N) (ww reports -1/sqrt(N) there because it computes sigma before alpha),
and a degenerate whole sample (all values equal) returns alpha=None (ww: alpha=0). A fit whose tail
holds fewer than :data:`MIN_TAIL` (10) eigenvalues is not reported (alpha=None, with the tail size and
the reason): on pure power laws such tails miss the true alpha by more than 1 in 40-85% of draws, and
pure-noise matrices with <= 8 columns fit alpha ~ 2, a false "over-trained" (spectra/docs/powerlaw-tail.md).
The fit runs on log-eigenvalues (:func:`fit_power_law_log`), so eigenvalues beyond float64's range
(sigma ~ 1e200) are fitted as exactly as ordinary ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MIN_TAIL", "PowerLawFit", "fit_power_law", "fit_power_law_log", "OVER_TRAINED", "UNDER_TRAINED"]

OVER_TRAINED = "over-trained"
UNDER_TRAINED = "under-trained"
EVALS_THRESH = 1e-5
SMALL_N_CUTOFF = 20
SMALL_N_KMIN = 8
#: Smallest tail (eigenvalues >= xmin) whose alpha is reported; evidence in spectra/docs/powerlaw-tail.md.
MIN_TAIL = 10


@dataclass(frozen=True)
class PowerLawFit:
    """Power-law tail fit of an ESD. ``alpha`` None means no fit was possible (see ``warning``)."""

    alpha: float | None
    xmin: float | None  # None also when xmin is outside float64's range (log_xmin still holds it)
    n_tail: int | None
    sigma_alpha: float | None
    ks_distance: float | None
    warning: str | None
    n_fitted: int = 0  # eigenvalues above thresh that entered the fit
    method: str = "ww-mle-ks"
    log_xmin: float | None = None  # natural log of xmin

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        from hessian_spectra.io import json_safe

        return json_safe(asdict(self))


def _warning(alpha: float) -> str | None:
    if alpha < 2.0:
        return OVER_TRAINED
    if alpha > 6.0:
        return UNDER_TRAINED
    return None


def _ks_rows(logx: np.ndarray, rows: np.ndarray, alphas: np.ndarray, chunk_elems: int) -> np.ndarray:
    """KS distance for candidate rows (ascending indices into sorted log data) with exponents ``alphas``.

    Vectorised over a chunk of candidates at a time, in place to keep memory passes few.
    """
    n_all = logx.size
    out = np.ones(rows.size)
    if rows.size == 0:
        return out
    step = max(1, chunk_elems // n_all)
    inv_all = 1.0 / (n_all - rows).astype(float)
    for c0 in range(0, rows.size, step):
        r = rows[c0 : c0 + step]
        inv_n = inv_all[c0 : c0 + step]
        lo = int(r[0])
        cols = np.arange(n_all - lo, dtype=float)  # j - lo
        t = logx[None, lo:] - logx[r, None]  # ln(x_j / x_i)
        t *= (1.0 - alphas[c0 : c0 + step])[:, None]
        np.minimum(t, 0.0, out=t)  # j < i gives t > 0; clamp so exp cannot overflow (masked below)
        np.expm1(t, out=t)  # (x_j/x_i)^(1-alpha) - 1 = -F_theory
        t += np.multiply.outer(inv_n, cols)
        t -= ((r - lo) * inv_n)[:, None]  # + (j - i)/n = F_empirical
        np.abs(t, out=t)
        width = int(r[-1] - lo + 1)
        t[:, :width][np.arange(lo, lo + width)[None, :] < r[:, None]] = 0.0  # j < i: not in the tail
        out[c0 : c0 + step] = t.max(axis=1)
    return out


def fit_power_law(
    eigenvalues: np.ndarray,
    *,
    thresh: float = EVALS_THRESH,
    small_n_cutoff: int = SMALL_N_CUTOFF,
    chunk_elems: int = 1 << 16,
    min_tail: int = MIN_TAIL,
) -> PowerLawFit:
    """Fit ``p(x) ~ x^-alpha`` on the tail of ``eigenvalues`` (lambda = sigma^2), WeightWatcher's way.

    Every xmin candidate is scored at once with numpy (memory bounded by ``chunk_elems`` doubles). A
    tail shorter than ``min_tail`` is not reported (``alpha`` None; ``min_tail=0`` gives ww's value).
    """
    ev = np.asarray(eigenvalues, dtype=np.float64).ravel()
    ev = ev[np.isfinite(ev) & (ev > 0)]
    return fit_power_law_log(
        np.log(ev), thresh=thresh, small_n_cutoff=small_n_cutoff, chunk_elems=chunk_elems, min_tail=min_tail,
        values=ev,
    )  # fmt: skip


def fit_power_law_log(
    log_eigenvalues: np.ndarray,
    *,
    thresh: float = EVALS_THRESH,
    small_n_cutoff: int = SMALL_N_CUTOFF,
    chunk_elems: int = 1 << 16,
    min_tail: int = MIN_TAIL,
    values: np.ndarray | None = None,
) -> PowerLawFit:
    """:func:`fit_power_law` from natural logs of the eigenvalues (the fit only ever needs the logs).

    ``values`` (optional, the eigenvalues themselves in the same order) makes ``xmin`` exact instead of
    ``exp(log_xmin)``.
    """
    logs = np.asarray(log_eigenvalues, dtype=np.float64).ravel()
    keep = np.isfinite(logs) & (logs > math.log(thresh) if thresh > 0 else True)
    order = np.argsort(logs[keep], kind="stable")
    logx = logs[keep][order]
    logs = logs[np.isfinite(logs)]
    big_n = logx.size
    if big_n < 2:
        return PowerLawFit(
            None, None, None, None, None,
            f"fit failed: {big_n} eigenvalue(s) above {thresh:g} (absolute threshold on lambda = sigma^2, "
            "as WeightWatcher's)", big_n,
        )  # fmt: skip
    shift = logx.mean()
    lx = logx - shift  # centring keeps the suffix-sum subtraction below well conditioned
    suffix = np.cumsum(lx[::-1])[::-1]  # sum_{j >= i} lx_j
    idx = np.arange(big_n - 1)
    n = (big_n - idx).astype(float)
    s = suffix[:-1] - n * lx[:-1]  # sum_{j>=i} ln(x_j/x_i) >= 0
    s = np.maximum(s, 0.0)

    if big_n >= small_n_cutoff:
        with np.errstate(divide="ignore"):
            alphas = 1.0 + n / s
        ds = np.ones(big_n - 1)
        flat = ~np.isfinite(alphas)  # all tail values equal: ww's D is (n-1)/n there
        ds[flat] = (n[flat] - 1.0) / n[flat]
        ok = np.isfinite(alphas) & (alphas > 1.0)
        ds[ok] = _ks_rows(logx, idx[ok], alphas[ok], chunk_elems)
        best = int(np.argmin(ds))
        alpha = float(alphas[best])
        method = "ww-mle-ks"
    else:
        alphas = np.zeros(big_n - 1)
        ds = np.ones(big_n - 1)
        valid = (n >= SMALL_N_KMIN) & (s > 1e-12)
        alphas[valid] = 1.0 + (n[valid] - 1.0) / s[valid]
        ok = valid & (alphas > 1.0)
        ds[ok] = _ks_rows(logx, idx[ok], alphas[ok], chunk_elems)
        method = "ww-small-n"
        if ok.any():
            best = int(np.argmin(ds))
            alpha = float(alphas[best])
        else:
            best = 0
            s_all = float(s[0])
            if s_all <= 1e-12:
                return PowerLawFit(None, None, None, None, None, "fit failed: degenerate tail", big_n, method)
            alpha = 1.0 + (big_n - 1.0) / s_all
            ds[0] = _ks_rows(logx, np.array([0]), np.array([alpha]), chunk_elems)[0]
    log_xmin = float(logx[best])
    xmin = _exp_or_none(log_xmin)
    if values is not None and xmin is not None:
        xmin = float(np.asarray(values, dtype=np.float64)[keep][order][best])
    n_fit = big_n - best
    n_tail = int(np.count_nonzero(logs >= log_xmin))
    if n_tail < min_tail:
        return PowerLawFit(
            None, xmin, n_tail, None, float(ds[best]),
            f"not reported: the tail holds {n_tail} eigenvalue(s), fewer than the minimum {min_tail}",
            big_n, method, log_xmin,
        )  # fmt: skip
    sigma = (alpha - 1.0) / np.sqrt(n_fit)
    return PowerLawFit(
        alpha, xmin, n_tail, float(sigma), float(ds[best]), _warning(alpha), big_n, method, log_xmin
    )


def _exp_or_none(log_value: float) -> float | None:
    """exp(log_value) when it is a normal float64, else None (the log is kept by the caller)."""
    if log_value > math.log(np.finfo(np.float64).max) or log_value < math.log(np.finfo(np.float64).tiny):
        return None
    return math.exp(log_value)
