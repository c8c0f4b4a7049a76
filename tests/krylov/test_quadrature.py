"""SLQ densities and traces against planted spectra (exact density with the same kernel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hessian_spectra.krylov.lanczos import block_seed
from hessian_spectra.krylov.linop import DenseBlockOperator, DenseOperator
from hessian_spectra.krylov.slq import (
    DEFAULT_SIGMA_FRACTION,
    default_sigma_fraction,
    density_l1,
    exact_density,
    slq,
    slq_lockstep,
)
from support.oracles import planted_symmetric as planted

RNG = np.random.default_rng(0)
# MLP-Hessian-like: a bulk near zero (slightly skewed positive), a few outliers, some negative curvature
LAM = np.r_[
    RNG.normal(0, 0.05, 480) + RNG.exponential(0.05, 480), RNG.uniform(1, 3, 15), [-0.4, -0.3, 5, 8, 10]
]
A = planted(LAM, seed=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_l1_against_exact_at_10_probes_30_steps(seed):
    res = slq(DenseOperator(A), num_probes=10, steps=30, seed=seed)
    dens = res.density()
    assert (
        default_sigma_fraction(30) == pytest.approx(1 / 60)
        and default_sigma_fraction(100) == DEFAULT_SIGMA_FRACTION
    )
    assert dens.sigma == pytest.approx(default_sigma_fraction(30) * (res.ritz_max - res.ritz_min))
    ref = exact_density(LAM, dens.grid, dens.sigma)
    l1 = density_l1(dens, ref)
    assert l1 <= 0.05  # measured 0.008-0.017
    assert dens.integral() == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(dens.counts, dens.grid) == pytest.approx(A.shape[0], rel=1e-6)
    # a wrong spectrum is far: the test can fail
    wrong = exact_density(LAM * 1.3, dens.grid, dens.sigma)
    assert density_l1(dens, wrong) > max(0.08, 4 * l1)  # measured 0.092-0.103


def test_extreme_ritz_values_and_nodes():
    res = slq(DenseOperator(A), num_probes=4, steps=30, seed=0)
    assert res.nodes.shape == (4, 30) and res.weights.shape == (4, 30)
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, atol=1e-12)
    assert res.ritz_max == pytest.approx(10.0, rel=1e-8) and res.ritz_min <= -0.39  # extremes converge fast
    assert res.ritz_max <= LAM.max() + 1e-12 and res.ritz_min >= LAM.min() - 1e-12
    assert res.num_matvecs == 120
    json.dumps(res.to_dict(), allow_nan=False)
    json.dumps(res.density(num_points=50).to_dict(), allow_nan=False)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_trace_coverage_over_seeds(probe):
    exact = float(LAM.sum())
    z = []
    for s in range(25):
        r = slq(DenseOperator(A), num_probes=10, steps=10, seed=s, probe=probe)
        z.append((r.trace - exact) / r.trace_stderr)
    z = np.asarray(z)
    assert np.mean(np.abs(z) <= 3) >= 0.85
    assert np.mean(np.abs(z) <= 1) <= 0.95
    assert abs(np.mean(z)) < 0.8


def test_small_dim_quadrature_is_exact():
    lam = np.array([-1.0, 0.5, 2.0, 3.0, 7.0])
    r = slq(DenseOperator(planted(lam, seed=2)), num_probes=3, steps=30, seed=0)
    assert r.steps == 5 and all(t <= 5 for t in r.steps_taken)
    # the Krylov space is the whole 5-dim space: the nodes are the eigenvalues themselves
    np.testing.assert_allclose(np.sort(r.nodes[0, : r.steps_taken[0]]), lam, atol=1e-12)
    grid = np.linspace(-3, 9, 400)
    ref = exact_density(lam, grid, 0.3)
    d = r.density(grid, sigma=0.3)
    # with probe weights tau_i != 1/n the density differs, but integrates to the same mass
    assert d.integral() == pytest.approx(ref.integral(), abs=1e-6)


def test_invariant_probe_stops_early():
    a = torch.diag(torch.tensor([2.0] * 50 + [-1.0] * 50, dtype=torch.float64))
    r = slq(DenseOperator(a), num_probes=2, steps=20, seed=0)
    assert r.steps_taken == (2, 2) and r.num_matvecs == 4
    assert r.trace == pytest.approx(50.0, abs=1e-10)  # Rademacher on a diagonal: exact
    np.testing.assert_allclose(np.sort(r.nodes[0, :2]), [-1.0, 2.0], atol=1e-12)


def test_same_seed_bit_for_bit_and_float32():
    r1 = slq(DenseOperator(A), num_probes=3, steps=15, seed=4)
    r2 = slq(DenseOperator(A), num_probes=3, steps=15, seed=4)
    assert (
        np.array_equal(r1.nodes, r2.nodes) and np.array_equal(r1.weights, r2.weights) and r1.trace == r2.trace
    )
    r3 = slq(DenseOperator(A), num_probes=3, steps=15, seed=5)
    assert not np.array_equal(r1.nodes, r3.nodes)
    r32 = slq(DenseOperator(A.to(torch.float32)), num_probes=3, steps=15, seed=4)
    np.testing.assert_allclose(r32.nodes[:, -1], r1.nodes[:, -1], rtol=1e-5)  # top nodes agree
    assert r32.trace == pytest.approx(r1.trace, rel=1e-5)


def test_no_reorthogonalisation_still_estimates_trace():
    r = slq(DenseOperator(A), num_probes=3, steps=15, seed=4, reorthogonalize=False)
    ref = slq(DenseOperator(A), num_probes=3, steps=15, seed=4)
    assert r.trace == pytest.approx(ref.trace, rel=1e-10)  # trace uses alpha_0 only


def test_lockstep_equals_sequential():
    mats = [planted(LAM[:120], seed=1), planted(LAM[-60:], seed=2), planted([3.0, 1.0], seed=3)]
    mop = DenseBlockOperator(mats, names=["w1", "w2", "b"])
    res = slq_lockstep(mop, num_probes=3, steps=20, seed=9)
    assert [r.name for r in res] == ["w1", "w2", "b"]
    assert mop.num_matvecs == 3 * 20
    for b, m in enumerate(mats):
        ref = slq(DenseOperator(m), num_probes=3, steps=20, seed=block_seed(9, b))
        assert np.array_equal(res[b].nodes, ref.nodes) and np.array_equal(res[b].weights, ref.weights)
        assert res[b].trace == ref.trace and res[b].seed == ref.seed
    alone = slq_lockstep(DenseBlockOperator(mats[1:2]), num_probes=3, steps=20, seed=9)
    assert not np.array_equal(alone[0].nodes, res[1].nodes)  # index 0 vs 1: a different stream
    moved = slq_lockstep(DenseBlockOperator([mats[2], mats[1]]), num_probes=3, steps=20, seed=9)
    assert np.array_equal(
        moved[1].nodes, slq(DenseOperator(mats[1]), num_probes=3, steps=20, seed=block_seed(9, 1)).nodes
    )


def test_density_helpers_validate():
    g1 = exact_density([0.0], np.linspace(-1, 1, 11), 0.1)
    g2 = exact_density([0.0], np.linspace(-1, 1, 12), 0.1)
    with pytest.raises(ValueError):
        density_l1(g1, g2)
    with pytest.raises(ValueError):
        exact_density([0.0], np.linspace(-1, 1, 11), 0.0)
    assert density_l1(g1, g1) == 0.0
    with pytest.raises(ValueError):
        slq(DenseOperator(A), num_probes=0)
