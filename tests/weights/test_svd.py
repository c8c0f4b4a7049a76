"""hessian_spectra.weights.svd against torch.linalg.svdvals / numpy SVD on planted spectra (float64)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.weights.svd import count_nonfinite, singular_values
from hessian_spectra.weights.svd_batched import singular_values_batched
from hessian_spectra.weights.svd_partial import PartialSpectrum, partial_singular_values
from support.oracles import planted_singular as planted


def svdvals(w: torch.Tensor) -> np.ndarray:
    return torch.linalg.svdvals(w.double()).numpy()


@pytest.mark.parametrize("shape", [(120, 50), (50, 120), (64, 64)])
def test_gram_and_svd_agree_on_well_conditioned(shape):
    n, m = shape
    s = np.geomspace(10.0, 1.0, min(n, m))  # condition number 10
    w = planted(s, n, m, seed=1)
    ref = svdvals(w)
    gram = singular_values(w, method="gram")
    svd = singular_values(w, method="svd")
    auto = singular_values(w)
    assert gram.shape == (min(n, m),) and np.all(np.diff(gram) <= 0)
    np.testing.assert_allclose(gram, svd, rtol=1e-12, atol=0)
    np.testing.assert_allclose(svd, ref, rtol=1e-13, atol=0)
    np.testing.assert_allclose(auto, gram, rtol=0, atol=0)  # auto keeps the Gram result here
    np.testing.assert_allclose(gram, s, rtol=1e-12)


def test_auto_falls_back_to_svd_when_ill_conditioned():
    s = np.geomspace(1.0, 1e-10, 40)  # condition number 1e10
    w = planted(s, 90, 40, seed=2)
    ref = svdvals(w)
    gram = singular_values(w, method="gram")
    auto = singular_values(w)
    # The Gram path cannot resolve sigma_min = 1e-10 (eigenvalue 1e-20 below eps * sigma_max^2) ...
    assert abs(gram[-1] - ref[-1]) / ref[-1] > 1e-2
    # ... so auto falls back to the SVD and gets it right.
    assert abs(auto[-1] - ref[-1]) / ref[-1] < 1e-6
    np.testing.assert_allclose(auto, ref, rtol=1e-6)
    np.testing.assert_allclose(auto[-1], s[-1], rtol=1e-5)


def test_auto_threshold_boundary_accuracy():
    """Just above the fallback threshold (kappa = 5e4) Gram keeps sigma_min to ~eps * kappa^2."""
    s = np.geomspace(1.0, 2e-5, 30)
    w = planted(s, 60, 30, seed=3)
    ref = svdvals(w)
    auto = singular_values(w)
    assert abs(auto[-1] - ref[-1]) / ref[-1] < 1e-6


def test_float32_dtype_allowed_and_less_accurate_on_sigma_min():
    s = np.geomspace(1.0, 1e-3, 50)
    w = planted(s, 100, 50, seed=4)
    ref = svdvals(w)
    s32 = singular_values(w, dtype=torch.float32, method="svd")
    assert s32.dtype == np.float64
    np.testing.assert_allclose(s32[0], ref[0], rtol=1e-5)
    assert abs(s32[-1] - ref[-1]) / ref[-1] > 1e-9  # fp32 really was used


def test_zero_and_empty_and_rank_deficient():
    assert singular_values(torch.zeros(5, 3)).tolist() == [0.0, 0.0, 0.0]
    assert singular_values(torch.zeros(0, 3)).size == 0
    w = planted(np.array([3.0, 2.0]), 20, 10, seed=5)
    got = singular_values(w)  # rank 2: sigma_min/sigma_max ~ 1e-16 -> SVD fallback
    np.testing.assert_allclose(got[:2], [3.0, 2.0], rtol=1e-13)
    assert np.all(got[2:] < 1e-14)


def test_nonfinite_input_gives_nan_not_crash():
    w = torch.randn(6, 4, dtype=torch.float64)
    w[1, 2] = float("nan")
    w[3, 0] = float("inf")
    assert count_nonfinite(w) == 2
    assert count_nonfinite(torch.ones(3, 3)) == 0
    got = singular_values(w)
    assert got.shape == (4,) and np.all(np.isnan(got))
    assert all(np.all(np.isnan(x)) for x in singular_values_batched([w, w.T]))


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("method", ["auto", "gram", "svd"])
def test_batched_matches_one_by_one(batch, method):
    gen = torch.Generator().manual_seed(0)
    mats = [
        torch.randn(30, 12, generator=gen),
        torch.randn(12, 30, generator=gen),  # same oriented shape as the first
        torch.randn(20, 20, generator=gen),
        planted(np.geomspace(1, 1e-9, 12), 30, 12, seed=6),  # needs the SVD fallback under auto
        torch.randn(30, 12, generator=gen),
    ]
    got = singular_values_batched(mats, method=method, batch=batch)
    assert len(got) == len(mats)
    for w, g in zip(mats, got, strict=True):
        one = singular_values(w, method=method)
        np.testing.assert_allclose(g, one, rtol=1e-12, atol=1e-13 * one[0])
    ref = svdvals(mats[3])
    if method != "gram":
        np.testing.assert_allclose(got[3][-1], ref[-1], rtol=1e-6)


@pytest.mark.parametrize("shape", [(200, 80), (80, 200)])
@pytest.mark.parametrize("which", ["top", "bottom", "both"])
def test_partial_matches_svdvals(shape, which):
    n, m = shape
    s = np.geomspace(50.0, 0.5, min(n, m))
    w = planted(s, n, m, seed=7)
    ref = svdvals(w)
    k = 5
    ps = partial_singular_values(w, k, which=which, seed=0)
    assert isinstance(ps, PartialSpectrum)
    assert ps.converged and ps.method == "arpack"
    assert ps.frobenius_norm == pytest.approx(float(np.sqrt(np.sum(ref**2))), rel=1e-13)
    if which in ("top", "both"):
        np.testing.assert_allclose(ps.top, ref[:k], rtol=1e-10, atol=0)
        assert np.all(ps.top_residuals < 1e-10 * ref[0])
    else:
        assert ps.top is None
    if which in ("bottom", "both"):
        np.testing.assert_allclose(ps.bottom, ref[-k:], rtol=1e-10, atol=0)
        assert np.all(ps.bottom_residuals < 1e-10 * ref[0])
        assert ps.bottom[-1] == pytest.approx(s[-1], rel=1e-10)
    else:
        assert ps.bottom is None
    d = ps.to_dict()
    assert d["which"] == which and d["converged"] is True


def test_partial_bottom_on_rectangular_is_not_a_structural_zero():
    """A tall matrix's A A^T has zero eigenvalues; the bottom singular values must be the true ones."""
    s = np.linspace(3.0, 1.0, 30)
    w = planted(s, 150, 30, seed=8)
    ps = partial_singular_values(w, 3, which="bottom")
    np.testing.assert_allclose(ps.bottom, s[-3:], rtol=1e-10)
    ps_t = partial_singular_values(w.T, 3, which="bottom")
    np.testing.assert_allclose(ps_t.bottom, s[-3:], rtol=1e-10)


def test_partial_dense_fallback_for_large_k_and_seed_reproducible():
    w = planted(np.geomspace(5, 1, 10), 25, 10, seed=9)
    ps = partial_singular_values(w, 9, which="both")
    assert ps.method == "dense-svd" and ps.converged
    np.testing.assert_allclose(ps.top, svdvals(w)[:9], rtol=1e-12)
    x = torch.randn(60, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = partial_singular_values(x, 3, which="both", seed=1)
    b = partial_singular_values(x, 3, which="both", seed=1)
    assert a.converged and b.converged
    np.testing.assert_array_equal(a.top, b.top)
    np.testing.assert_array_equal(a.bottom, b.bottom)


def test_partial_not_converged_is_flagged_not_raised():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(400, 300, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ps = partial_singular_values(w, 4, which="bottom", max_iter=1, tol=1e-14)
    assert not ps.converged
    assert any(issubclass(r.category, ConvergenceWarning) for r in rec)
    ref = svdvals(w)[-4:]
    # whatever was kept is within its own residual bound of a true singular value
    for val, res in zip(ps.bottom, ps.bottom_residuals, strict=True):
        if np.isfinite(val):
            assert np.min(np.abs(svdvals(w) - val)) <= res * 1.0001 + 1e-12
    assert ps.bottom.shape == ref.shape


def test_partial_input_validation():
    w = torch.randn(10, 5)
    with pytest.raises(ValueError):
        partial_singular_values(w, 0)
    with pytest.raises(ValueError):
        partial_singular_values(w, 6)
    with pytest.raises(ValueError):
        partial_singular_values(w, 2, which="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        singular_values(w, method="qr")  # type: ignore[arg-type]
    w[0, 0] = float("nan")
    ps = partial_singular_values(w, 2, which="both")
    assert not ps.converged and np.all(np.isnan(ps.top))


@pytest.mark.parametrize("shape", [(2000, 120), (120, 2000)])
def test_gram_accumulated_in_slabs_matches_svd(monkeypatch, shape):
    """The slab-wise fp64 Gram (bounded memory for big float32 matrices) is as accurate as one shot."""
    import hessian_spectra.weights.svd as svd_mod

    monkeypatch.setattr(svd_mod, "GRAM_CHUNK_BYTES", 120 * 8 * 37)  # 37-row slabs, uneven last one
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    got = svd_mod.singular_values(w, method="gram")
    exact = torch.linalg.svdvals(w.double()).numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-12 * exact[0] / exact[-1] ** 2 * exact[0], atol=0)
    assert np.max(np.abs(got - exact)) <= 1e-12 * exact[0]


def test_count_nonfinite_fast_path_is_exact():
    """A sum that merely overflows is not mistaken for NaN/Inf, and every bad entry is counted."""
    big = torch.full((50, 40), 3e38, dtype=torch.float32)  # finite entries whose sum overflows
    assert count_nonfinite(big) == 0
    big[7, 3] = float("nan")
    big[0, 0] = float("-inf")
    assert count_nonfinite(big) == 2
    assert count_nonfinite(big.T) == 2
