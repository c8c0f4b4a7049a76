"""PC layer: polynomial map vs matrix polynomial, predicted spectra, merge/convert round trips, iid reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hessian_spectra.analyses.advice import pc_layer as pc
from hessian_spectra.analyses.advice import pc_merge as pcm
from hessian_spectra.errors import InputError
from torch.utils.flop_counter import FlopCounterMode

SHAPES = [(40, 24), (24, 40), (32, 32)]


def _rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def _heavy(shape, seed, outliers=3):
    """Heavy-tailed spectrum (Pareto) with planted outlier singular values, random singular vectors."""
    rng = np.random.default_rng(seed)
    n, m = shape
    k = min(n, m)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m, k)))
    s = np.sort(rng.pareto(2.0, k) + 0.02)[::-1].copy()
    s[:outliers] *= 8.0
    return torch.from_numpy((u * s) @ v.T)


def test_reference_polynomial_constants():
    # p_k(1) = 1, p_max on [0, 1] and the heavy-tail shrink factor p_max/q_k(0) from REFERENCE section 6
    for k, (pmax, shrink) in {
        1: (1.000, 0.664),
        2: (1.010, 0.485),
        3: (1.019, 0.350),
        4: (1.021, 0.282),
    }.items():
        assert pc.p_poly(k, 1.0) == pytest.approx(1.0, abs=1e-12)
        assert pc.p_max(k) == pytest.approx(pmax, abs=6e-4)
        assert pc.p_max(k) / pc.q_poly(k, 0.0) == pytest.approx(shrink, abs=6e-4)
        x_star, _ = pc.p_peak(k)
        xs = np.linspace(0, x_star, 2001)
        assert np.all(np.diff(pc.p_poly(k, xs)) > 0)  # increasing branch
    assert pc.p_poly(4, 1.2) == pytest.approx(1.25, abs=5e-3)
    for k in pc.LEVELS:  # "safe while sigma_max / s_hat <= 1.10"
        assert 1.10 <= pc.safe_ratio(k) <= 1.16


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", pc.LEVELS)
def test_matrix_polynomial_equals_polynomial_map(shape, level):
    w = _rand(shape, seed=level)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    for s_hat in (float(s[0]), 0.9 * float(s[0]), 2.5 * float(s[0])):  # includes x > 1 where p_k may turn
        got = pc.apply_pc(w, level, s_hat, gamma=0.7)
        expected = (u * torch.from_numpy(0.7 * s_hat * pc.p_poly(level, s.numpy() / s_hat))) @ vh
        assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
        sv = torch.linalg.svdvals(got).numpy()
        pred = pc.predicted_singular_values(s.numpy(), level, s_hat, gamma=0.7)
        np.testing.assert_allclose(sv, pred, rtol=1e-12, atol=1e-12 * pred[0])


@pytest.mark.parametrize("level", pc.LEVELS)
def test_predicted_condition_numbers_match_svd_of_preconditioned_matrix(level):
    w = _heavy((60, 30), seed=level)
    s = torch.linalg.svdvals(w).numpy()
    actual = torch.linalg.svdvals(pc.apply_pc(w, level, float(s[0]))).numpy()
    pred = pc.predicted_singular_values(s, level)
    assert pc.condition_number(pred) == pytest.approx(pc.condition_number(actual), rel=1e-10)
    assert pc.modified_condition_number(pred) == pytest.approx(
        pc.modified_condition_number(actual), rel=1e-10
    )
    assert pc.stable_rank(pred) == pytest.approx(pc.stable_rank(actual), rel=1e-10)
    # PC lowers the modified condition number of a heavy-tailed matrix by about p_max/q_k(0) or better
    assert pc.modified_condition_number(pred) < pc.modified_condition_number(s)


def test_metric_definitions():
    s = np.array([10.0, 5, 4, 3, 2, 1, 1, 0.5, 0.5, 0.25, 0.25])  # n = 11 -> bottom ceil(1.1) = 2
    assert pc.condition_number(s) == 40.0
    assert pc.modified_condition_number(s) == pytest.approx(40.0)
    assert pc.modified_condition_number(s[:10]) == pytest.approx(10 / 0.25)
    assert pc.stable_rank(s) == pytest.approx(np.sum(s**2) / 100)
    assert pc.condition_number(np.array([1.0, 0.0])) == math.inf


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", pc.LEVELS)
def test_convert_then_merge_round_trip(shape, level):
    w = _heavy(shape, seed=10 + level)
    for gamma in (1.0, 0.5):
        form = pcm.convert_to_pc(w, level, gamma=gamma)
        # s_hat is the converted weight's own spectral norm and u^T V v recovers it
        assert float(torch.linalg.matrix_norm(form.weight, ord=2)) == pytest.approx(form.s_hat, rel=1e-12)
        merged = pcm.merge_pc(form.weight, form.gamma, form.u, form.v, level)
        assert float((merged - w).abs().max()) <= 1e-10 * float(w.abs().max())


@pytest.mark.parametrize("level", [2, 4])
def test_converted_weight_survives_power_iteration(level):
    # the top gap 1 vs <= x_star makes the layer's own power iteration find s_hat quickly
    w = _heavy((48, 24), seed=3)
    form = pcm.convert_to_pc(w, level)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(24, generator=g, dtype=torch.float64)
    for _ in range(40):
        u = form.weight @ v
        u = u / u.norm()
        v = form.weight.T @ u
        v = v / v.norm()
    merged = pcm.merge_pc(form.weight, form.gamma, u, v, level)
    assert float((merged - w).abs().max()) <= 1e-8 * float(w.abs().max())


@pytest.mark.parametrize("level", pc.LEVELS)
def test_merge_then_convert_round_trip(level):
    # a PC weight in canonical form (x_1 = 1, the others on the increasing branch with p_k(x) < 1, the form
    # convert_to_pc produces) is recovered exactly
    rng = np.random.default_rng(level)
    n, m = 30, 20
    x_one = float(pc.p_inverse(level, np.array([1.0]))[0])
    x = np.concatenate([[1.0], np.sort(rng.uniform(0.01, 0.95 * x_one, m - 1))[::-1]])
    u, _ = np.linalg.qr(rng.standard_normal((n, m)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    s_hat, gamma = 3.0, 1.7
    pc_weight = torch.from_numpy((u * (s_hat * x)) @ v.T)
    merged = pcm.merge_pc(pc_weight, gamma, torch.from_numpy(u[:, 0]), torch.from_numpy(v[:, 0]), level)
    back = pcm.convert_to_pc(merged, level, gamma=gamma)
    assert back.s_hat == pytest.approx(s_hat, rel=1e-12)
    assert float((back.weight - pc_weight).abs().max()) <= 1e-10 * float(pc_weight.abs().max())
    # and merging again reproduces the same effective weight
    again = pcm.merge_pc(back.weight, back.gamma, back.u, back.v, level)
    assert float((again - merged).abs().max()) <= 1e-10 * float(merged.abs().max())


def test_merge_accepts_unnormalised_vectors_and_tensor_gamma():
    w = _rand((20, 12), seed=5)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    a = pcm.merge_pc(w, 1.3, u[:, 0], vh[0], 4)
    b = pcm.merge_pc(w, torch.tensor([1.3]), 5 * u[:, 0], 0.1 * vh[0], 4)
    assert torch.allclose(a, b, atol=1e-13)
    with pytest.raises(InputError):
        pcm.merge_pc(w, 1.0, u[:10, 0], vh[0], 4)


def test_merge_sensitivity_matches_finite_difference():
    w = _heavy((64, 32), seed=7)
    s = torch.linalg.svdvals(w).numpy()
    for level in pc.LEVELS:
        base = pc.apply_pc(w, level, float(s[0]))
        moved = pc.apply_pc(w, level, float(s[0]) * 1.01)
        actual = float(torch.linalg.matrix_norm(moved - base) / torch.linalg.matrix_norm(base))
        assert pcm.merge_sensitivity(s, level) == pytest.approx(actual, rel=1e-9)
    # REFERENCE: a 1% error in s_hat moves the merged weight ~0.8% at level 4
    assert 0.005 < pcm.merge_sensitivity(s, 4) < 0.011


def test_p_inverse_and_its_limits():
    for k in pc.LEVELS:
        x_star, pmax = pc.p_peak(k)
        x = np.linspace(0, x_star, 101)
        np.testing.assert_allclose(pc.p_inverse(k, pc.p_poly(k, x)), x, atol=1e-12)
        with pytest.raises(InputError, match="no solution"):
            pc.p_inverse(k, np.array([pmax * 1.001]))
    with pytest.raises(InputError):
        pc.p_poly(5, 0.5)


@pytest.mark.parametrize("level", pc.LEVELS)
def test_extra_flops_formula_matches_counted_flops(level):
    for shape in [(48, 16), (16, 48)]:
        w = _rand(shape, seed=1)
        with FlopCounterMode(display=False) as counter:
            pc.apply_pc(w, level, 2.0)
        assert counter.get_total_flops() == pc.extra_forward_flops(*shape, level)["polynomial"]


def test_iid_reference_against_monte_carlo_and_reference_numbers():
    rng = np.random.default_rng(0)
    for shape, anchor, tol in [((352, 128), 3.3, 0.03), ((256, 256), 25.0, 0.06)]:
        mc = np.mean(
            [
                pc.modified_condition_number(np.linalg.svd(rng.standard_normal(shape), compute_uv=False))
                for _ in range(4)
            ]
        )
        ref = pc.iid_modified_condition_number(*shape)
        assert ref == pytest.approx(mc, rel=tol)
        assert ref == pytest.approx(anchor, rel=0.05)
    # orientation does not matter; the square value converges (size dependence stated in the docstring)
    assert pc.iid_modified_condition_number(128, 352) == pc.iid_modified_condition_number(352, 128)
    assert pc.iid_modified_condition_number(4096, 4096) == pytest.approx(
        pc.iid_modified_condition_number(1024, 1024), rel=0.01
    )
    assert pc.iid_condition_number(64, 64) == math.inf


def test_power_estimate_matches_actual_power_iteration():
    w = _heavy((40, 20), seed=2)
    u_, s, vh = torch.linalg.svd(w, full_matrices=False)
    coeffs = np.random.default_rng(1).standard_normal(20)
    v = vh.T @ torch.from_numpy(coeffs)
    for _ in range(10):
        v = w.T @ (w @ v)
        v = v / v.norm()
    actual = float((w @ v).norm()) / float(s[0])
    x2 = (s.numpy() / float(s[0])) ** 2
    assert pc._power_estimate(x2, coeffs, 10) == pytest.approx(actual, rel=1e-12)
    r = pc.power_iteration_ratio(s.numpy(), seed=0)
    assert 1.0 <= r["median"] <= r["worst"]


def test_merge_state_dict_round_trip():
    w1, w2 = _heavy((30, 20), seed=1), _heavy((20, 30), seed=2)
    f1, f2 = pcm.convert_to_pc(w1, 4, gamma=2.0), pcm.convert_to_pc(w2, 4)
    sd = {
        "blk.0.mlp.weight": f1.weight, "blk.0.mlp.gamma": torch.tensor([f1.gamma], dtype=torch.float64),
        "blk.0.mlp.u": f1.u, "blk.0.mlp.v": f1.v,
        "blk.1.mlp.weight": f2.weight, "blk.1.mlp.gamma": torch.tensor(f2.gamma, dtype=torch.float64),
        "blk.1.mlp.u": f2.u, "blk.1.mlp.v": f2.v,
        "norm.weight": torch.ones(20, dtype=torch.float64),
    }  # fmt: skip
    before = dict(sd)
    res = pcm.merge_pc_state_dict(sd, 4)
    assert res.merged == ("blk.0.mlp", "blk.1.mlp")
    assert set(res.state_dict) == {"blk.0.mlp.weight", "blk.1.mlp.weight", "norm.weight"}
    assert float((res.state_dict["blk.0.mlp.weight"] - w1).abs().max()) <= 1e-10 * float(w1.abs().max())
    assert float((res.state_dict["blk.1.mlp.weight"] - w2).abs().max()) <= 1e-10 * float(w2.abs().max())
    assert res.s_hat["blk.0.mlp"] == pytest.approx(f1.s_hat)
    assert sd.keys() == before.keys() and sd["blk.0.mlp.weight"] is f1.weight  # input untouched
    del sd["blk.1.mlp.v"]
    with pytest.raises(InputError, match="lacks"):
        pcm.merge_pc_state_dict(sd, 4)
