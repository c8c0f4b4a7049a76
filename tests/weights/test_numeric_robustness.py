"""Weight metrics at the edges of float64 (issue 14): 1e-300..1e300 entries, zero matrices, tiny tails.

Oracles: LAPACK svdvals on the unscaled matrix (it rescales internally, so it is exact at any scale), the
planted singular values times the scale, and the same metrics at scale 1 (ratios must not move).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hessian_spectra.weights.metrics import METRIC_FIELDS, compute_metrics
from hessian_spectra.weights.plan import WeightsSettings
from hessian_spectra.weights.powerlaw import MIN_TAIL, fit_power_law
from hessian_spectra.weights.probe import analyze_weights
from hessian_spectra.weights.svd import scaled_singular_values, singular_values
from hessian_spectra.weights.svd_batched import scaled_singular_values_batched
from hessian_spectra.weights.svd_partial import partial_singular_values
from support import ckpt_factory as cf
from support.oracles import planted_singular as planted

SCALES = (2.0**-990, 1e-300, 1e-200, 1e-100, 1e80, 1e200, 1e300)
RATIOS = ("stable_rank", "participation_ratio", "soft_rank", "effective_rank", "numerical_rank",
          "condition_number", "modified_condition_number", "spectral_entropy", "mp_n_spikes")  # fmt: skip
NORMS = ("sigma_max", "sigma_min", "frobenius_norm", "nuclear_norm", "mp_noise_sigma", "mp_bulk_edge")


def _metrics(w, **kw):
    sp = scaled_singular_values(w, **kw)
    return compute_metrics(sp.values, tuple(w.shape), name="w", exponent=sp.exponent)


def assert_reasons_complete(mm) -> None:
    """Every metric that is None or infinite says why; nothing else is listed as null."""
    for key in METRIC_FIELDS:
        value = getattr(mm, key)
        null = value is None or (isinstance(value, float) and not math.isfinite(value))
        assert (key in mm.null_reasons) == null or key in ("condition_number", "modified_condition_number"), (
            key
        )
        if null:
            assert mm.null_reasons[key], key


@pytest.fixture(scope="module")
def base():
    s = np.geomspace(8.0, 0.08, 40)  # kappa = 100: every path (Gram or SVD) is exact to ~1e-13
    return planted(s, 96, 40, seed=11).numpy(), s


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_planted_spectrum_at_extreme_scales(base, scale, backend):
    w0, s = base
    w = w0 * scale
    ref = torch.linalg.svdvals(torch.from_numpy(w)).numpy()  # LAPACK scales internally: exact at any scale
    np.testing.assert_allclose(ref, s * scale, rtol=1e-12)
    x = w if backend == "numpy" else torch.from_numpy(w)
    np.testing.assert_allclose(singular_values(x), ref, rtol=1e-12)
    one, mm = _metrics(w0), _metrics(x)
    assert mm.spectrum == "full" and not mm.n_nonfinite
    for key in RATIOS:
        assert getattr(mm, key) == pytest.approx(getattr(one, key), rel=1e-11), key
    for key in NORMS:
        assert getattr(mm, key) == pytest.approx(getattr(one, key) * scale, rel=1e-11), key
    assert mm.log_norm == pytest.approx(one.log_norm + 2 * math.log10(scale), abs=1e-9)
    assert mm.log_spectral_norm == pytest.approx(one.log_spectral_norm + 2 * math.log10(scale), abs=1e-9)
    if scale >= 1:  # every eigenvalue is above the fit's absolute 1e-5 threshold at scale 1 and above
        assert mm.alpha == pytest.approx(one.alpha, rel=1e-9) and mm.n_tail == one.n_tail
    else:  # WeightWatcher's threshold is absolute (lambda > 1e-5): stated, never a silent null
        assert mm.alpha is None and "1e-05" in mm.null_reasons["alpha"]
    assert_reasons_complete(mm)
    assert json.dumps(mm.to_dict(), allow_nan=False)


@pytest.mark.parametrize("k", [-700, -500, 500, 700])
def test_power_of_two_scale_is_bit_identical(base, k):
    """Scaling by 2**k commutes with rounding: the same bits, only the exponent moves. (Matrices within
    2**+-400 are not scaled at all, since it could not change a bit; 2**+-500/700 are.)"""
    w0, _ = base
    a, b = scaled_singular_values(w0), scaled_singular_values(np.ldexp(w0, k))
    assert a.exponent == 0 and b.exponent != 0
    assert np.array_equal(np.ldexp(b.values, b.exponent - k), a.values)
    for method in ("gram", "svd"):
        ref = scaled_singular_values(w0, method=method).values
        got = scaled_singular_values(np.ldexp(w0, k), method=method)
        assert np.array_equal(np.ldexp(got.values, got.exponent - k), ref), method


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_batched_and_partial_paths_at_extreme_scales(base, scale):
    w0, s = base
    w = torch.from_numpy(w0 * scale)
    (sp,) = scaled_singular_values_batched([w], batch=True)
    np.testing.assert_allclose(sp.unscaled(), s * scale, rtol=1e-12)
    ps = partial_singular_values(w, 5, which="both")
    assert ps.converged
    np.testing.assert_allclose(ps.top, s[:5] * scale, rtol=1e-10)
    np.testing.assert_allclose(ps.bottom, s[-5:] * scale, rtol=1e-10)
    assert ps.frobenius_norm == pytest.approx(math.sqrt(np.sum(s**2)) * scale, rel=1e-12)
    part = compute_metrics(None, tuple(w.shape), partial=ps)
    assert part.stable_rank == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-10)
    assert part.condition_number == pytest.approx(s[0] / s[-1], rel=1e-10)
    assert_reasons_complete(part)


def test_one_1e300_entry_is_ok_with_correct_metrics():
    """Issue case: one 1e300 entry gave status "ok" with every metric null (the Gram overflowed)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 10))
    w[3, 4] = 1e300
    ref = np.linalg.svd(w, compute_uv=False)
    mm = _metrics(w)
    assert mm.spectrum == "full"
    assert mm.sigma_max == pytest.approx(ref[0], rel=1e-15) and mm.sigma_max == pytest.approx(
        1e300, rel=1e-15
    )
    assert mm.frobenius_norm == pytest.approx(1e300, rel=1e-15)
    assert mm.stable_rank == 1.0 and mm.participation_ratio == 1.0 and mm.numerical_rank == 1
    assert mm.log_norm == pytest.approx(600.0, abs=1e-12)
    # the other singular values are ~1e-300 of sigma_max: not resolved in float64, and said so
    assert mm.condition_number == math.inf and "numerically singular" in mm.null_reasons["condition_number"]
    assert mm.alpha is None and "numerical_rank_tol" in mm.null_reasons["alpha"]
    assert_reasons_complete(mm)


def test_tiny_nonzero_matrix_is_not_zero():
    """Issue case: a nonzero matrix of scale 1e-200 was reported as a "zero matrix"."""
    w = np.random.default_rng(1).standard_normal((30, 12)) * 1e-200
    mm = _metrics(w)
    assert mm.spectrum == "full" and mm.sigma_max > 0
    np.testing.assert_allclose(mm.sigma_max, np.linalg.svd(w, compute_uv=False)[0], rtol=1e-12)
    assert mm.numerical_rank == 12 and math.isfinite(mm.condition_number)


@pytest.mark.parametrize("make", [np.zeros, lambda shape: torch.zeros(shape, dtype=torch.bfloat16)])
def test_zero_matrix_reports_what_is_defined(make):
    """Issue case: a real zero matrix was "ok" with null metrics; now "zero" with norms and ranks 0."""
    w = make((16, 6))
    mm = _metrics(w)
    assert mm.spectrum == "zero"
    assert (mm.sigma_max, mm.sigma_min, mm.frobenius_norm, mm.nuclear_norm, mm.numerical_rank) == (
        0,
        0,
        0,
        0,
        0,
    )
    for key in ("stable_rank", "condition_number", "alpha", "log_norm", "spectral_entropy", "mp_bulk_edge"):
        assert getattr(mm, key) is None and "zero matrix" in mm.null_reasons[key], key
    assert_reasons_complete(mm)
    ps = partial_singular_values(torch.zeros(16, 6, dtype=torch.float64), 2, which="both")
    assert compute_metrics(None, (16, 6), partial=ps).spectrum == "zero"


@pytest.mark.parametrize("scale", [1e80, 1e200])
def test_float64_weights_near_1e80_1e200_do_not_raise(scale):
    """Issue case: float64 weights around 1e80 / 1e200 raised OverflowError / LinAlgError."""
    w = np.random.default_rng(2).standard_normal((64, 32)) * scale
    for method in ("auto", "gram", "svd"):
        sp = scaled_singular_values(w, method=method)
        mm = compute_metrics(sp.values, w.shape, exponent=sp.exponent)
        ref = np.linalg.svd(w, compute_uv=False)
        np.testing.assert_allclose(sp.unscaled(), ref, rtol=1e-10)
        r = ref / ref[0]  # the oracle itself would overflow at 1e80 without this
        assert mm.participation_ratio == pytest.approx(np.sum(r**2) ** 2 / np.sum(r**4), rel=1e-12)


def test_alpha_not_reported_on_two_singular_values():
    """Issue case: alpha 91-135 "fitted" on 2 singular values. Below MIN_TAIL it is None, with the reason."""
    w = np.random.default_rng(3).standard_normal((2, 300))
    mm = _metrics(w)
    assert mm.alpha is None and mm.alpha_weighted is None and mm.log_alpha_norm is None
    assert mm.n_tail == 2 and f"fewer than the minimum {MIN_TAIL}" in mm.null_reasons["alpha"]
    assert_reasons_complete(mm)


def test_min_tail_boundary_on_pareto_samples():
    rng = np.random.default_rng(4)
    lam = (1 - rng.uniform(size=400)) ** (-1 / 2.0)  # Pareto, alpha = 3
    fit = fit_power_law(lam)
    assert fit.n_tail >= MIN_TAIL and fit.alpha is not None
    tiny = np.sort(lam)[-(MIN_TAIL - 1) :]  # a whole sample smaller than the minimum
    small = fit_power_law(tiny)
    assert small.alpha is None and small.sigma_alpha is None and small.n_tail == MIN_TAIL - 1
    assert fit_power_law(tiny, min_tail=0).alpha is not None  # WeightWatcher's own behaviour on request


def test_probe_statuses_on_a_hostile_checkpoint(tmp_path, capsys):
    """The issue's matrices in one safetensors file: statuses, reasons and the CLI table/CSV."""
    from support.cli import run_cli

    rng = np.random.default_rng(5)
    big = rng.standard_normal((24, 12))
    big[0, 0] = 1e300
    sd = {
        "big.weight": torch.from_numpy(big),
        "tiny.weight": torch.from_numpy(rng.standard_normal((24, 12)) * 1e-200),
        "zero.weight": torch.zeros(24, 12, dtype=torch.float64),
        "huge.weight": torch.from_numpy(rng.standard_normal((24, 12)) * 1e200),
        "pair.weight": torch.from_numpy(rng.standard_normal((2, 50))),
        "max.weight": torch.from_numpy(rng.standard_normal((24, 12)) * 1e307),  # sigma^2 beyond float64
    }
    path = cf.write_safetensors(sd, tmp_path / "m.safetensors")
    report = analyze_weights(path, WeightsSettings())
    status = {m.name: m.status for m in report.matrices}
    assert status == {"big.weight": "ok", "tiny.weight": "ok", "zero.weight": "zero", "huge.weight": "ok",
                      "pair.weight": "ok", "max.weight": "ok"}  # fmt: skip
    for m in report.matrices:
        assert_reasons_complete(m.metrics)
        row = m.to_dict()["metrics"]
        nulls = {k for k in METRIC_FIELDS if row[k] is None}
        assert nulls <= set(row["null_reasons"]), (m.name, nulls - set(row["null_reasons"]))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["weights", str(path), "--out", str(out)], capsys)
    assert code == 0, stderr
    assert "zero" in stdout and "1e+300" in stdout
    csv_text = (out / "weights.csv").read_text()
    assert "null_reasons" in csv_text.splitlines()[0] and "zero matrix" in csv_text
    from hessian_spectra.figures.esd import plot_esd

    for m in report.matrices:  # the ESD of a zero matrix and of sigma ~1e307 used to crash matplotlib
        if m.name in ("zero.weight", "max.weight"):
            assert plot_esd(m.singular_values, m.metrics, tmp_path / f"{m.name}.png").stat().st_size > 0
