"""Spectral clipping: hard/soft clip against exact SVD formulas, Newton-Schulz step counts, weight bound, MP spikes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hessian_spectra.analyses.advice import clipping as cl
from hessian_spectra.errors import InputError


def _with_spectrum(shape, s, seed=0):
    rng = np.random.default_rng(seed)
    n, m = shape
    k = min(n, m)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m, k)))
    return torch.from_numpy((u * np.asarray(s, dtype=np.float64)) @ v.T)


def _rel_err(a, b):
    return float(torch.linalg.matrix_norm(a - b, ord=2) / torch.linalg.matrix_norm(b, ord=2))


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_hard_clip_caps_singular_values_and_keeps_vectors(shape):
    s = np.linspace(8.0, 0.1, min(shape))
    x = _with_spectrum(shape, s, seed=1)
    u, sv, vh = torch.linalg.svd(x, full_matrices=False)
    got = cl.hard_clip(x, 3.0)
    assert torch.allclose(got, (u * sv.clamp(max=3.0)) @ vh, atol=1e-12)
    np.testing.assert_allclose(torch.linalg.svdvals(got).numpy(), np.minimum(s, 3.0), atol=1e-12)
    small = _with_spectrum(shape, s / 10, seed=1)
    assert torch.allclose(cl.hard_clip(small, 3.0), small, atol=1e-12)


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (40, 40)])
@pytest.mark.parametrize("ratio", [0.3, 1.0, 2.0, 5.0, 10.0])
def test_soft_clip_matches_exact_formula_with_recommended_steps(shape, ratio):
    c = 2.0
    rng = np.random.default_rng(int(ratio * 10))
    s = np.sort(rng.uniform(0.0, 1.0, min(shape)))[::-1] * ratio * c
    s[0] = ratio * c
    x = _with_spectrum(shape, s, seed=2)
    got = cl.soft_clip(x, c)
    exact = cl.soft_clip_exact(x, c)
    assert _rel_err(got, exact) <= 1e-5
    # exact formula s / sqrt(1 + s^2/c^2) and always below min(s, c)
    sv = torch.linalg.svdvals(got).numpy()
    np.testing.assert_allclose(sv, cl.soft_clip_values(s, c), rtol=1e-5, atol=1e-5 * c)
    assert np.all(sv <= np.minimum(s, c) + 1e-9)


def test_soft_clip_with_an_estimated_norm():
    # an under-estimate of sigma_max (power iteration) still converges with the same step budget
    s = np.linspace(10.0, 0.0, 30)
    x = _with_spectrum((30, 30), s, seed=3)
    got = cl.soft_clip(x, 1.0, sigma_max=8.0, steps=cl.newton_schulz_steps(10.0))
    assert _rel_err(got, cl.soft_clip_exact(x, 1.0)) <= 1e-5


def test_newton_schulz_step_count_is_needed_and_ten_steps_fail_far_out():
    s = np.geomspace(10.0, 0.01, 32)
    x = _with_spectrum((32, 48), s, seed=4)
    exact = cl.soft_clip_exact(x, 1.0)
    steps = cl.newton_schulz_steps(10.0)
    assert steps == 10
    assert _rel_err(cl.soft_clip(x, 1.0, steps=steps - 4), exact) > 1e-3  # the budget is not padding
    # REFERENCE: ~10 steps are badly off at sigma_max / c = 100; the formula's budget is not
    far = _with_spectrum((32, 48), s * 10, seed=4)
    exact_far = cl.soft_clip_exact(far, 1.0)
    assert _rel_err(cl.soft_clip(far, 1.0, steps=10), exact_far) > 0.05
    assert _rel_err(cl.soft_clip(far, 1.0), exact_far) <= 1e-5
    assert cl.newton_schulz_steps(0.0) == cl.NS_FINISH_STEPS
    with pytest.raises(InputError):
        cl.newton_schulz_steps(math.inf)


def test_soft_hard_gap():
    gap = cl.soft_hard_gap(np.array([1.0]), 1.0)
    assert gap["top"] == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)
    s = np.array([4.0, 1.0, 0.1])
    hard, soft = np.minimum(s, 2.0), s / np.sqrt(1 + (s / 2.0) ** 2)
    assert cl.soft_hard_gap(s, 2.0)["frobenius"] == pytest.approx(
        np.linalg.norm(hard - soft) / np.linalg.norm(hard)
    )
    assert cl.soft_hard_gap(np.array([1e-3]), 10.0)["top"] < 1e-8  # far below c both leave s alone


@pytest.mark.parametrize("shape", [(64, 16), (16, 64)])
def test_weight_norm_bound_is_the_steady_state_of_post_clipped_training(shape):
    # adversarial updates: always the same huge rank-one direction, clipped to c
    c, lam, eta = 2.0, 0.1, 0.05
    rows, cols = shape
    u = torch.zeros(rows, dtype=torch.float64)
    u[0] = 1
    v = torch.zeros(cols, dtype=torch.float64)
    v[0] = 1
    upd = -1e3 * torch.outer(u, v)
    x = torch.zeros(shape, dtype=torch.float64)
    bound = cl.weight_norm_bound(c, lam, rows, cols)
    assert bound == pytest.approx(c / lam * math.sqrt(max(1, rows / cols)))
    for _ in range(3000):
        x = (1 - lam * eta) * x - math.sqrt(max(1, rows / cols)) * eta * cl.hard_clip(upd, c)
        assert float(torch.linalg.matrix_norm(x, ord=2)) <= bound * (1 + 1e-12)
    assert float(torch.linalg.matrix_norm(x, ord=2)) >= 0.99 * bound
    assert cl.weight_norm_bound(c, 0.0, rows, cols) == math.inf


def test_clip_spikes_use_the_weights_spike_definition():
    """One spike definition (issue #15: recommend said 27 and weights 34 for the same matrix): the clip
    report's spikes are the weights probe's MP spikes, noise fit and edge included."""
    from hessian_spectra.analyses.advice.clip_advice import clip_report
    from hessian_spectra.analyses.advice.inputs import MatrixInput
    from hessian_spectra.weights.marchenko import marchenko_pastur

    rng = np.random.default_rng(0)
    n, m, sd = 400, 160, 0.03
    noise = rng.standard_normal((n, m)) * sd
    a, _ = np.linalg.qr(rng.standard_normal((n, 3)))
    b, _ = np.linalg.qr(rng.standard_normal((m, 3)))
    edge = sd * (math.sqrt(n) + math.sqrt(m))
    for w, planted in ((noise, 0), (noise + (a * np.array([3.0, 2.5, 2.0]) * edge) @ b.T, 3)):
        s = np.linalg.svd(w, compute_uv=False)
        rep = clip_report(MatrixInput("w", "mlp_up", (n, m), s), 5.0, None)
        fit = marchenko_pastur(s, (n, m))
        assert rep.n_spikes == fit.n_spikes == planted
        assert rep.mp_edge == fit.bulk_edge and rep.spike_threshold == fit.bulk_edge + fit.margin
        assert rep.mp_noise == pytest.approx(sd, rel=0.03)


def test_bad_threshold_is_an_input_error():
    x = torch.eye(3, dtype=torch.float64)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(InputError):
            cl.hard_clip(x, bad)
        with pytest.raises(InputError):
            cl.soft_clip(x, bad)
