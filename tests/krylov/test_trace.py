"""Hutchinson and Hutch++ against exact traces, over many seeds (coverage of the stderr)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hessian_spectra.krylov.linop import DenseOperator
from hessian_spectra.krylov.trace import hutchinson, hutchpp
from support.oracles import planted_symmetric as planted

RNG = np.random.default_rng(1)
LAM = np.r_[
    RNG.normal(0, 0.05, 280) + RNG.exponential(0.05, 280), RNG.uniform(1, 3, 15), [-0.4, 5, 8, 10, 12]
]


class MatmatOperator(DenseOperator):
    """A dense operator that also offers batched ``matmat`` (columns)."""

    def __init__(self, matrix):
        super().__init__(matrix)
        self.matmat_calls = 0

    def matmat(self, v):
        self.matmat_calls += 1
        self._count += v.shape[1]
        return self.matrix @ v


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_coverage_over_seeds(probe):
    a = planted(LAM, seed=3)
    exact = float(torch.trace(a))
    z = [
        (est.value - exact) / est.stderr
        for est in (hutchinson(DenseOperator(a), num_probes=30, seed=s, probe=probe) for s in range(40))
    ]
    z = np.asarray(z)
    assert np.mean(np.abs(z) <= 3) >= 0.9  # nominal 99.7%; t-distribution with 29 dof and 40 trials
    assert np.mean(np.abs(z) <= 1) <= 0.95  # and the stderr is not absurdly large
    assert abs(np.mean(z)) < 0.6  # unbiased: mean z-score near 0 (sd of the mean ~ 0.16)


def test_hutchinson_fields_determinism_and_matmat():
    a = planted(LAM, seed=4)
    r1 = hutchinson(DenseOperator(a), num_probes=20, seed=5)
    r2 = hutchinson(DenseOperator(a), num_probes=20, seed=5)
    op = MatmatOperator(a)
    r3 = hutchinson(op, num_probes=20, seed=5, batch_size=8)
    assert r1 == r2 and r1.num_matvecs == 20 and r1.num_probes == 20 and r1.method == "hutchinson-rademacher"
    assert op.matmat_calls == 3 and r3.value == pytest.approx(r1.value, rel=1e-12)
    json.dumps(r1.to_dict(), allow_nan=False)


def test_hutchinson_is_exact_for_diagonal_with_rademacher():
    a = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    r = hutchinson(DenseOperator(a), num_probes=3, seed=0)
    assert r.value == pytest.approx(55.0, rel=1e-14) and r.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchpp_beats_hutchinson_on_low_rank_plus_noise():
    n = 400
    lam = np.r_[np.linspace(50, 10, 15), np.random.default_rng(2).uniform(0, 0.05, n - 15)]
    a = planted(lam, seed=6)
    exact = float(lam.sum())
    err_h = [abs(hutchinson(DenseOperator(a), num_probes=60, seed=s).value - exact) for s in range(15)]
    runs = [hutchpp(DenseOperator(a), num_matvecs=60, seed=s) for s in range(15)]
    err_pp = [abs(r.value - exact) for r in runs]
    assert all(r.num_matvecs == 60 for r in runs)
    assert np.sqrt(np.mean(np.square(err_pp))) < 0.2 * np.sqrt(np.mean(np.square(err_h)))
    cover = np.mean([abs(r.value - exact) <= 3 * r.stderr for r in runs])
    assert cover >= 0.8


def test_hutchpp_counts_and_errors():
    a = planted(LAM[:50], seed=7)
    op = DenseOperator(a)
    r = hutchpp(op, num_matvecs=10, seed=0)
    assert r.num_matvecs == 10 == op.num_matvecs and r.num_probes == 4
    with pytest.raises(ValueError):
        hutchpp(op, num_matvecs=2)
    with pytest.raises(ValueError):
        hutchinson(op, num_probes=0)
