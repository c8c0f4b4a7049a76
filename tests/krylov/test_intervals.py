"""Intervals (t, bootstrap, exact, degenerate probes), the Krylov-deflated SLQ trace against its dense
derivation, per-probe SLQ samples, spectral masses and the trace estimators' intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hessian_spectra.krylov.intervals import (
    Interval,
    bootstrap_interval,
    exact_interval,
    t_interval,
    t_quantile,
    variance_bound,
)
from hessian_spectra.krylov.linop import DenseOperator
from hessian_spectra.krylov.slq import slq
from hessian_spectra.krylov.trace import draw_probes, exact_trace, hutchinson, hutchpp, trace_estimate
from scipy.special import ndtr
from support.oracles import planted_symmetric as planted

RNG = np.random.default_rng(5)
LAM = np.r_[RNG.normal(0, 0.05, 150) + RNG.exponential(0.05, 150), RNG.uniform(1, 3, 8), [-0.4, 5, 9]]
A = planted(LAM, seed=2)


def test_t_interval_numbers_by_hand():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    iv = t_interval(x, level=0.9, offset=10.0)
    se = x.std(ddof=1) / 2
    assert t_quantile(0.95, 9) == pytest.approx(2.2621571628, rel=1e-9)
    assert t_quantile(0.95, 4) == pytest.approx(2.7764451052, rel=1e-9)
    assert iv.estimate == 13.5 and iv.stderr == pytest.approx(se) and iv.dof == 3 and iv.probes == 4
    assert iv.ci_high - iv.estimate == pytest.approx(2.3533634348 * se, rel=1e-9)  # t_{0.95, 3}
    assert iv.method == "t" and iv.level == 0.9 and iv.covers(13.5) and not iv.covers(100.0)
    d = iv.to_dict()
    assert set(d) >= {"estimate", "stderr", "ci_low", "ci_high", "level", "probes", "method"}
    json.dumps(d, allow_nan=False)
    with pytest.raises(ValueError):
        t_interval(x, level=1.0)


def test_agreeing_probes_never_give_a_zero_width_interval_on_their_own():
    same = np.full(6, 3.0)
    assert t_interval(same).method == "unbounded"  # nothing known about the spread
    iv = t_interval(same, variance_bound=0.5)
    assert iv.method == "t-bound" and iv.stderr == pytest.approx(math.sqrt(0.5 / 6)) and iv.half_width > 0
    # a zero bound (every probe an eigenvector of one eigenvalue): accepted only if chance agreement is rare
    cert = t_interval(same, variance_bound=0.0, chance_agreement=2.0**-5, rounding=1e-12)
    assert cert.method == "certificate" and cert.half_width == pytest.approx(t_quantile(0.95, 5) * 1e-12)
    assert t_interval(same, variance_bound=0.0, chance_agreement=0.2).method == "unbounded"
    assert json.dumps(t_interval(same).to_dict(), allow_nan=False)  # infinite bounds are written as null
    assert variance_bound([4.0, 4.0], 2.0, 1, 1e-16) == 0.0  # 2 (F2 - T^2/n) at rounding level -> 0
    ex = exact_interval(1.5, probes=3)
    assert ex.method == "exact" and ex.half_width == 0 and ex.covers(1.5)


def test_skew_guard_widens_one_signed_skewed_samples_only():
    rng = np.random.default_rng(0)
    skewed = rng.chisquare(1, 5) * 2.0
    plain, guarded = t_interval(skewed), t_interval(skewed, skew_guard=True)
    assert guarded.ci_high >= plain.ci_high and guarded.ci_low <= plain.ci_low
    mixed = np.array([1.0, -0.5, 2.0, 0.3])
    assert t_interval(mixed, skew_guard=True) == t_interval(mixed)


def test_bootstrap_is_seeded_and_as_wide_as_t_for_a_mean():
    x = np.random.default_rng(1).normal(2.0, 1.0, 10)
    a = bootstrap_interval(x, np.mean, seed=3)
    b = bootstrap_interval(x, lambda r: r.mean(axis=1), seed=3, batched=True)
    assert a == b and a.method == "bootstrap" and a.estimate == pytest.approx(x.mean())
    t = t_interval(x)
    assert 0.75 < a.half_width / t.half_width < 1.25  # expanded percentile ~ t at n = 10
    assert bootstrap_interval(np.ones(5), np.mean).method == "unbounded"


def _dense_lanczos(a: np.ndarray, v: np.ndarray, m: int):
    n = a.shape[0]
    q = np.zeros((n, m + 1))
    q[:, 0] = v / np.linalg.norm(v)
    t = np.zeros((m, m))
    for j in range(m):
        w = a @ q[:, j]
        for _ in range(2):
            w -= q[:, : j + 1] @ (q[:, : j + 1].T @ w)
        t[j, j] = q[:, j] @ (a @ q[:, j])
        if j + 1 < m:
            t[j, j + 1] = t[j + 1, j] = np.linalg.norm(w)
        q[:, j + 1] = w / np.linalg.norm(w)
    return q[:, :m]


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_deflated_residuals_equal_their_dense_definition(probe):
    """Probe j's residual sample is z_j^T P A P z_j with P = I - Q Q^T, Q the first probe's Krylov basis,
    z_j = sqrt(n) v_j; the plain samples are n v^T A v (z^T A z exactly for sign vectors)."""
    n_p, m = 4, 12
    res = slq(DenseOperator(A), num_probes=n_p, steps=m, seed=7, probe=probe)
    gen = torch.Generator().manual_seed(7)
    zs = []
    for _ in range(n_p):
        z = draw_probes(A.shape[0], 1, gen, probe)[:, 0]
        zs.append((z / z.norm() * math.sqrt(A.shape[0])).numpy())
    a = A.numpy()
    np.testing.assert_allclose(res.trace_samples, [z @ a @ z for z in zs], rtol=1e-10, atol=1e-12)
    if probe == "rademacher":
        assert all(np.all(np.abs(z) == 1.0) for z in zs)
    q = _dense_lanczos(a, zs[0], m)
    p = np.eye(a.shape[0]) - q @ q.T
    want = [z @ p @ a @ p @ z for z in zs[1:]]
    np.testing.assert_allclose(res.deflation.residuals(res.trace_samples), want, rtol=1e-8, atol=1e-10)
    assert res.deflation.top == pytest.approx(np.trace(q.T @ a @ q), rel=1e-10)
    assert res.deflation.rank == m and not res.deflation.full
    np.testing.assert_allclose(res.second_moments, [np.sum((a @ z) ** 2) for z in zs], rtol=1e-9)
    iv = res.trace_interval()
    assert iv.estimator == "slq-deflated" and iv.probes == n_p - 1 and iv.dof == n_p - 2
    assert iv.estimate == pytest.approx(res.deflation.top + np.mean(want), rel=1e-9)
    plain = res.trace_interval(method="plain")
    assert plain.estimate == pytest.approx(res.trace) and plain.stderr == pytest.approx(res.trace_stderr)


def test_full_krylov_space_is_exact_and_numbers_are_unchanged():
    small = planted([3.0, -1.0, 0.5, 0.25, 2.0, 0.0], seed=1)
    res = slq(DenseOperator(small), num_probes=3, steps=10, seed=0)
    assert res.deflation.full and res.trace_interval().method == "exact"
    assert res.trace_interval().estimate == pytest.approx(4.75, abs=1e-13)
    np.testing.assert_allclose(np.sort(res.exact_eigenvalues()), [-1, 0, 0.25, 0.5, 2, 3], atol=1e-13)
    sigma = res.density_sigma()
    m = res.mass_below(0.1)
    assert m.method == "exact" and m.estimate == pytest.approx(
        np.mean(ndtr((0.1 - res.exact_eigenvalues()) / sigma))
    )
    assert res.negative_share().estimate == pytest.approx(1.0 / 6.75)
    # the deflation adds fields, never changes the existing ones
    off = slq(DenseOperator(A), num_probes=3, steps=10, seed=4, deflate_trace=False)
    on = slq(DenseOperator(A), num_probes=3, steps=10, seed=4)
    assert off.deflation is None and off.trace == on.trace and np.array_equal(off.nodes, on.nodes)
    assert off.trace_interval().estimator == "slq"


def test_zero_and_scaled_identity_blocks():
    """Every probe an eigenvector of one eigenvalue: a certificate (A = 0, A = 2 I), not a wide bound."""
    for mat, tr in (
        (torch.zeros(40, 40, dtype=torch.float64), 0.0),
        (2.0 * torch.eye(40, dtype=torch.float64), 80.0),
    ):
        res = slq(DenseOperator(mat), num_probes=8, steps=10, seed=0)
        for method in ("plain", "auto"):
            iv = res.trace_interval(method=method)
            assert iv.method in ("certificate", "exact") and iv.covers(tr, 1e-12) and iv.half_width < 1e-10
        few = slq(DenseOperator(mat), num_probes=3, steps=10, seed=0)  # 2^-2 chance agreement > 5%
        assert few.trace_interval(method="plain").method == "unbounded"


def test_mass_intervals_cover_over_seeds():
    """Smoothed mass below 0 (t interval) and the hard count below -0.2 (quadrature bracket): coverage."""
    hits_s, hits_h = [], []
    for seed in range(40):
        res = slq(DenseOperator(A), num_probes=8, steps=25, seed=seed)
        sigma = res.density_sigma()
        hits_s.append(res.mass_below(0.0).covers(float(np.mean(ndtr(-LAM / sigma)))))
        hard = res.mass_below(-0.2, sigma=0.0)
        hits_h.append(hard.covers(float(np.mean(LAM < -0.2))))
        assert 0.0 <= hard.ci_low <= hard.ci_high <= 1.0
    assert np.mean(hits_s) >= 0.85 and np.mean(hits_h) >= 0.9


def test_density_band_covers_pointwise():
    """The pointwise band of the smoothed density against the exact density with the same kernel: averaged
    over the grid points that carry mass, about the nominal 95%; exact spectra give a zero-width band."""
    from hessian_spectra.krylov.density import exact_density

    cover = []
    for seed in range(30):
        res = slq(DenseOperator(A), num_probes=8, steps=25, seed=seed)
        band = res.density_band(num_points=200)
        ref = exact_density(LAM, band.grid, res.density_sigma()).values
        keep = ref > 0.01 * ref.max()
        cover.append(np.mean((band.low[keep] <= ref[keep]) & (ref[keep] <= band.high[keep])))
        assert np.allclose(band.values, res.density(num_points=200).values) and band.method == "t"
    assert 0.88 <= np.mean(cover) <= 0.99, np.mean(cover)
    small = slq(DenseOperator(planted([1.0, 2.0, -1.0], seed=0)), num_probes=3, steps=5, seed=0)
    b = small.density_band(num_points=50)
    assert b.method == "exact" and np.array_equal(b.low, b.high)
    json.dumps(b.to_dict(), allow_nan=False)


def test_trace_estimator_intervals_and_auto_rule():
    exact = float(LAM.sum())
    op = DenseOperator(A)
    h = hutchinson(op, num_probes=20, seed=1)
    hp = hutchpp(DenseOperator(A), num_matvecs=30, seed=1)
    for r in (h, hp):
        iv = r.interval()
        assert isinstance(iv, Interval) and iv.method == "t" and iv.estimate == pytest.approx(r.value)
        json.dumps(r.to_dict(), allow_nan=False)
    assert hp.interval().dof == hp.num_probes - 1 and hp.num_matvecs == 30
    # a diagonal matrix probed with signs: every sample equal -> a variance bound, not a zero width
    d = hutchinson(DenseOperator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))), num_probes=4)
    assert d.interval().method == "t-bound" and d.interval().covers(55.0) and d.interval().half_width > 1
    # auto: exact when dim <= matvecs; Hutch++ on a fast-decaying spectrum; Hutchinson on a flat one
    small = planted(np.arange(1.0, 21.0), seed=3)
    ex = trace_estimate(DenseOperator(small), num_matvecs=20)
    assert ex.exact and ex.value == pytest.approx(210.0) and ex.interval().method == "exact"
    assert exact_trace(DenseOperator(small)).num_matvecs == 20
    decay = planted(np.r_[np.linspace(50, 10, 12), np.full(188, 0.01)], seed=4)
    flat = planted(np.random.default_rng(0).uniform(1.0, 2.0, 200), seed=5)
    assert trace_estimate(DenseOperator(decay), num_matvecs=60, seed=0).method == "hutch++"
    r = trace_estimate(DenseOperator(flat), num_matvecs=60, seed=0)
    assert r.method == "hutchinson-rademacher" and r.num_matvecs == 60 and r.num_probes == 40
    assert abs(trace_estimate(op, num_matvecs=60, seed=0).value - exact) < 0.2 * abs(exact)
