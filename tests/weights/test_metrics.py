"""hessian_spectra.weights.metrics / marchenko / summary / powerlaw against closed forms on planted spectra and brute-force oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hessian_spectra.weights.marchenko import marchenko_pastur, mp_median
from hessian_spectra.weights.metrics import MatrixMetrics, compute_metrics, renyi_rank
from hessian_spectra.weights.powerlaw import fit_power_law
from hessian_spectra.weights.summary import summarize
from hessian_spectra.weights.svd import singular_values
from hessian_spectra.weights.svd_partial import partial_singular_values
from support.oracles import planted_singular as planted


def brute_force_fit(lam: np.ndarray) -> tuple[float, float, float]:
    """Loop-by-loop continuous MLE + KS over every xmin (independent oracle of the vectorised fit)."""
    x = np.sort(lam[lam > 1e-5])
    best = (math.inf, 0.0, 0.0)
    for i in range(len(x) - 1):
        tail = x[i:]
        n = len(tail)
        alpha = 1 + n / sum(math.log(t / x[i]) for t in tail)
        d = max(abs(1 - (t / x[i]) ** (1 - alpha) - j / n) for j, t in enumerate(tail)) if alpha > 1 else 1.0
        if d < best[0]:
            best = (d, alpha, x[i])
    return best[1], best[2], best[0]


@pytest.fixture(scope="module")
def spectrum():
    rng = np.random.default_rng(0)
    s = np.sort(rng.uniform(0.5, 4.0, 60))[::-1]
    s[:3] = [30.0, 20.0, 12.0]
    return s


def test_closed_forms_on_planted_spectrum(spectrum):
    s = spectrum
    n, m = 150, 60
    w = planted(s, n, m, seed=1)
    mm = compute_metrics(singular_values(w), (n, m), name="w")
    lam = s**2
    p = lam / lam.sum()
    q = s / s.sum()
    assert mm.spectrum == "full" and mm.shape == (150, 60)
    rel = dict(rel=1e-11)
    assert mm.sigma_max == pytest.approx(30.0, **rel)
    assert mm.sigma_min == pytest.approx(s[-1], **rel)
    assert mm.frobenius_norm == pytest.approx(math.sqrt(lam.sum()), **rel)
    assert mm.frobenius_norm == pytest.approx(float(torch.linalg.matrix_norm(w)), **rel)
    assert mm.nuclear_norm == pytest.approx(s.sum(), **rel)
    assert mm.stable_rank == pytest.approx(lam.sum() / 900.0, **rel)
    assert mm.participation_ratio == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), **rel)
    assert mm.soft_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), **rel)
    assert mm.effective_rank == pytest.approx(math.exp(-(q * np.log(q)).sum()), **rel)
    assert mm.condition_number == pytest.approx(30.0 / s[-1], **rel)
    assert mm.modified_condition_number == pytest.approx(30.0 / s[-6:].mean(), **rel)  # ceil(10% of 60)
    assert mm.numerical_rank == 60
    assert mm.numerical_rank_tol == pytest.approx(30.0 * 150 * np.finfo(np.float64).eps, **rel)
    assert mm.numerical_rank_dtype == "float64"
    assert mm.spectral_entropy == pytest.approx(-(p * np.log(p)).sum() / math.log(60), **rel)
    assert mm.log_norm == pytest.approx(math.log10(lam.sum()), **rel)
    assert mm.log_spectral_norm == pytest.approx(math.log10(900.0), **rel)
    assert mm.alpha_weighted == pytest.approx(mm.alpha * math.log10(900.0), **rel)
    assert mm.log_alpha_norm == pytest.approx(math.log10((lam**mm.alpha).sum()), **rel)
    # Renyi family: a=1 soft, a=2 hard, a=inf stable
    r = mm.renyi_ranks
    assert r["1"] == pytest.approx(mm.soft_rank, **rel)
    assert r["2"] == pytest.approx(mm.participation_ratio, **rel)
    assert r["inf"] == pytest.approx(mm.stable_rank, **rel)
    assert r["0.5"] == pytest.approx(np.sum(np.sqrt(p)) ** 2, **rel)
    assert r["3"] == pytest.approx((p**3).sum() ** (-0.5), **rel)
    assert json.dumps(mm.to_dict(), allow_nan=False)


def test_wide_matrix_same_metrics_as_transpose(spectrum):
    w = planted(spectrum, 150, 60, seed=2)
    a = compute_metrics(singular_values(w), tuple(w.shape))
    b = compute_metrics(singular_values(w.T), tuple(w.T.shape))
    for key in ("stable_rank", "alpha", "numerical_rank_tol", "mp_bulk_edge", "spectral_entropy"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_renyi_ordering_stable_hard_soft(seed):
    rng = np.random.default_rng(seed)
    s = np.sort(rng.lognormal(0, 1.5, 40))[::-1]
    mm = compute_metrics(s, (80, 40))
    r = mm.renyi_ranks
    assert mm.stable_rank <= mm.participation_ratio <= mm.soft_rank
    assert r["inf"] <= r["3"] <= r["2"] <= r["1"] <= r["0.5"] <= 40
    assert renyi_rank(s**2 / np.sum(s**2), 0) == 40


def test_numerical_rank_with_planted_tiny_values():
    s = np.array([5.0, 3.0, 1.0, 1e-6, 1e-9, 1e-20, 1e-22, 0.0])
    n, m = 40, 8
    w = planted(s, n, m, seed=3)
    sv = singular_values(w)
    mm = compute_metrics(sv, (n, m))
    tol = 5.0 * 40 * np.finfo(np.float64).eps  # 4.4e-14: 1e-9 counts, 1e-20 does not
    assert mm.numerical_rank_tol == pytest.approx(tol, rel=1e-12)
    assert mm.numerical_rank == 5
    assert mm.numerical_rank == np.linalg.matrix_rank(w.numpy())
    mm32 = compute_metrics(sv, (n, m), dtype="float32")  # tolerance follows the stated dtype
    assert mm32.numerical_rank == 3 and mm32.numerical_rank_dtype == "float32"  # tol 2.4e-5 drops 1e-6
    # entropy normalised by the numerical rank
    p = sv**2 / np.sum(sv**2)
    p = p[p > 0]
    assert mm.spectral_entropy == pytest.approx(-(p * np.log(p)).sum() / math.log(5), rel=1e-10)


def test_singular_and_zero_matrices():
    mm = compute_metrics(np.array([2.0, 1.0, 0.0]), (5, 3))
    assert mm.condition_number == math.inf and mm.to_dict()["condition_number"] is None
    assert any("condition number is infinite" in w for w in mm.warnings)
    assert "numerically singular" in mm.null_reasons["condition_number"]
    z = compute_metrics(np.zeros(3), (5, 3), name="z")
    assert z.spectrum == "zero" and z.sigma_max == 0.0 and z.numerical_rank == 0
    assert z.alpha is None and "zero matrix" in z.null_reasons["alpha"] and z.warnings


def test_nonfinite_gives_none_row_not_crash():
    w = torch.randn(10, 4, dtype=torch.float64)
    w[0, 0] = float("inf")
    mm = compute_metrics(singular_values(w), (10, 4), name="bad", n_nonfinite=1)
    assert mm.spectrum == "nonfinite" and mm.n_nonfinite == 1
    assert all(getattr(mm, k) is None for k in ("sigma_max", "alpha", "stable_rank", "mp_n_spikes"))
    assert json.dumps(mm.to_dict(), allow_nan=False)


def test_power_law_fit_matches_brute_force_oracle():
    rng = np.random.default_rng(4)
    for _ in range(6):
        n = int(rng.integers(20, 150))
        lam = (rng.pareto(rng.uniform(1, 4), n) + 1) * rng.uniform(0.01, 5)
        fit = fit_power_law(lam, chunk_elems=int(rng.integers(1, 3000)))
        alpha, xmin, d = brute_force_fit(lam)
        assert fit.alpha == pytest.approx(alpha, rel=1e-10)
        assert fit.xmin == xmin
        assert fit.ks_distance == pytest.approx(d, rel=1e-10, abs=1e-12)
        assert fit.n_tail == int(np.sum(lam >= xmin))
        assert fit.sigma_alpha == pytest.approx((alpha - 1) / math.sqrt(fit.n_tail), rel=1e-10)


@pytest.mark.parametrize("alpha_true", [2.5, 3.5, 5.0])
def test_power_law_recovers_pareto_alpha(alpha_true):
    """Pure Pareto samples, pdf ~ x^-alpha on [xmin, inf): alpha within 3 sigma_alpha."""
    rng = np.random.default_rng(int(alpha_true * 10))
    u = rng.uniform(size=3000)
    lam = 0.7 * (1 - u) ** (-1 / (alpha_true - 1))
    fit = fit_power_law(lam)
    assert abs(fit.alpha - alpha_true) <= 3 * fit.sigma_alpha
    assert fit.sigma_alpha < 0.25 * alpha_true
    assert fit.n_tail >= 50
    assert fit.warning is None  # 2 <= alpha <= 6


def test_power_law_warnings_and_small_n():
    lam_heavy = 1.0 * (1 - np.random.default_rng(5).uniform(size=2000)) ** (-1 / 0.6)  # alpha = 1.6
    assert fit_power_law(lam_heavy).warning == "over-trained"
    lam_light = (1 - np.random.default_rng(6).uniform(size=2000)) ** (-1 / 7.0)  # alpha = 8
    assert fit_power_law(lam_light).warning == "under-trained"
    small = fit_power_law(np.geomspace(1, 100, 12))
    assert small.method == "ww-small-n" and small.n_tail >= 8
    assert fit_power_law(np.array([1e-7, 2.0])).alpha is None  # one value above 1e-5: no fit
    # values at or below 1e-5 are ignored
    base = np.geomspace(0.1, 50, 100)
    a = fit_power_law(base)
    b = fit_power_law(np.concatenate([base, np.full(30, 1e-6)]))
    assert a.alpha == b.alpha and a.n_fitted == b.n_fitted == 100


def test_mp_median_against_simulation():
    rng = np.random.default_rng(7)
    for n, m in [(800, 800), (1200, 300)]:
        z = torch.from_numpy(rng.standard_normal((n, m)))
        ev = singular_values(z) ** 2 / n
        assert mp_median(m / n) == pytest.approx(np.median(ev), rel=0.015)


@pytest.mark.parametrize("shape", [(300, 300), (800, 200)])
def test_mp_iid_gaussian_has_no_spikes(shape):
    n, m = shape
    total = 0
    for seed in range(6):
        z = 0.02 * np.random.default_rng(seed).standard_normal((n, m))
        fit = marchenko_pastur(singular_values(torch.from_numpy(z)), shape)
        assert fit.noise_sigma == pytest.approx(0.02, rel=0.02)
        assert fit.bulk_edge == pytest.approx(0.02 * (math.sqrt(n) + math.sqrt(m)), rel=0.02)
        total += fit.n_spikes
    assert total <= 1


def test_mp_planted_spikes_counted_exactly():
    n, m = 800, 300
    rng = np.random.default_rng(8)
    noise = 0.1
    edge = noise * (math.sqrt(n) + math.sqrt(m))
    u, _ = np.linalg.qr(rng.standard_normal((n, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((m, 4)))
    spikes = np.array([4.0, 3.0, 2.0, 1.6]) * edge  # well above the BBP detection threshold
    w = noise * rng.standard_normal((n, m)) + (u * spikes) @ v.T
    s = singular_values(torch.from_numpy(w))
    fit = marchenko_pastur(s, (n, m))
    assert fit.n_spikes == 4
    assert fit.noise_sigma == pytest.approx(noise, rel=0.03)
    mm = compute_metrics(s, (n, m))
    assert mm.mp_n_spikes == 4 and mm.mp_bulk_edge == pytest.approx(fit.bulk_edge)


def test_partial_metrics_match_full_and_mark_others_none(spectrum):
    n, m = 150, 60
    w = planted(spectrum, n, m, seed=9)
    full = compute_metrics(singular_values(w), (n, m), name="w")
    ps = partial_singular_values(w, 6, which="both")
    part = compute_metrics(None, (n, m), name="w", partial=ps)
    assert part.spectrum == "partial" and part.warnings
    for key in ("sigma_max", "sigma_min", "frobenius_norm", "stable_rank", "condition_number",
                "modified_condition_number", "log_norm", "log_spectral_norm"):  # fmt: skip
        assert getattr(part, key) == pytest.approx(getattr(full, key), rel=1e-10), key
    for key in ("nuclear_norm", "participation_ratio", "soft_rank", "renyi_ranks", "effective_rank",
                "numerical_rank", "spectral_entropy", "alpha", "alpha_weighted", "log_alpha_norm",
                "mp_bulk_edge", "mp_n_spikes"):  # fmt: skip
        assert getattr(part, key) is None, key
    top_only = compute_metrics(None, (n, m), partial=partial_singular_values(w, 3, which="top"))
    assert top_only.sigma_min is None and top_only.condition_number is None
    assert top_only.stable_rank == pytest.approx(full.stable_rank, rel=1e-10)
    assert json.dumps(part.to_dict(), allow_nan=False)


def test_summarize_flags_outliers_by_name():
    rows = []
    rng = np.random.default_rng(10)
    for i in range(12):
        s = np.sort(rng.uniform(1, 2, 20))[::-1]
        s[0] = rng.uniform(3, 5)
        if i == 7:
            s[0] = 200.0  # a spike: huge sigma_max and condition number
        rows.append(compute_metrics(s, (40, 20), name=f"layer{i}"))
    summ = summarize(rows)
    sm = summ.metrics["sigma_max"]
    vals = np.array([r.sigma_max for r in rows])
    assert sm.n == 12 and sm.outliers == ("layer7",)
    assert sm.median == pytest.approx(np.median(vals))
    assert sm.mean == pytest.approx(vals.mean())
    assert sm.mean_without_outliers == pytest.approx(np.delete(vals, 7).mean())
    mk = summ.metrics["modified_condition_number"]
    mk_vals = np.array([r.modified_condition_number for r in rows])
    assert mk.geometric_mean == pytest.approx(math.exp(np.mean(np.log(mk_vals))))
    assert summ.metrics["numerical_rank"].outliers == ()  # MAD = 0: nothing flagged
    assert json.dumps(summ.to_dict(), allow_nan=False)
    assert isinstance(rows[0], MatrixMetrics)


@pytest.mark.parametrize("beta", [1e-3, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_mp_median_against_adaptive_quadrature(beta):
    """The numpy-only MP median equals scipy's adaptive quadrature + root finding to ~1e-12."""
    import math

    from scipy.integrate import quad
    from scipy.optimize import brentq

    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x):
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * beta * x)

    cuts = [lo + f * (hi - lo) for f in (1e-9, 1e-6, 1e-3)]

    def cdf(t):
        pieces = zip([lo, *cuts], [*cuts, hi], strict=True)
        return sum(
            quad(density, a, min(b, t), limit=500, epsabs=1e-15, epsrel=1e-13)[0] for a, b in pieces if a < t
        )

    expected = brentq(lambda t: cdf(t) - 0.5, lo, hi, xtol=1e-15, rtol=1e-14)
    assert mp_median(beta) == pytest.approx(expected, rel=1e-11)
