"""Power iteration: finds the largest |lambda| (signed), not lambda_max; lanczos gets lambda_max."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.krylov.lanczos import lanczos
from hessian_spectra.krylov.linop import DenseOperator
from hessian_spectra.krylov.power import power_iteration
from support.oracles import planted_symmetric as planted

BULK = np.random.default_rng(0).uniform(-0.3, 0.3, 200)


def test_psd_top_eigenvalue_converges():
    a = planted(np.r_[BULK + 0.3, 2.0, 1.0])
    res = power_iteration(DenseOperator(a), max_iter=500, tol=1e-8)
    assert res.converged and res.num_matvecs == res.iterations
    assert res.eigenvalue == pytest.approx(2.0, rel=1e-12)
    assert abs(res.eigenvalue - 2.0) <= res.residual  # the residual bounds the error
    json.dumps(res.to_dict(), allow_nan=False)


def test_indefinite_returns_largest_magnitude_not_lambda_max():
    a = planted(np.r_[BULK, 1.0, 0.9, -1.25])
    res = power_iteration(DenseOperator(a), max_iter=500, tol=1e-8)
    assert res.converged
    assert res.eigenvalue == pytest.approx(-1.25, rel=1e-10)  # documented: largest |lambda|, signed
    lz = lanczos(DenseOperator(a), 1)
    assert lz.converged and lz.lambda_max == pytest.approx(1.0, rel=1e-10)
    assert lz.lambda_min == pytest.approx(-1.25, rel=1e-10)


def test_near_tie_is_flagged_not_silently_wrong():
    # |lambda_min| ~ lambda_max (the PyHessian-at-init situation): after 20 matvecs it has not converged
    a = planted(np.r_[BULK, 0.635, -0.62])
    with pytest.warns(ConvergenceWarning, match="largest \\|lambda\\|"):
        res = power_iteration(DenseOperator(a), max_iter=20, tol=1e-6)
    assert not res.converged
    assert res.residual > 1e-2 * abs(res.eigenvalue)  # the residual says the number is unreliable
    ev = torch.linalg.eigvalsh(a).numpy()
    assert np.min(np.abs(ev - res.eigenvalue)) <= res.residual  # and still bounds the error
    assert lanczos(DenseOperator(a), 1, max_steps=40).lambda_max == pytest.approx(0.635, rel=1e-8)


def test_bad_max_iter():
    with pytest.raises(ValueError):
        power_iteration(DenseOperator(torch.eye(2, dtype=torch.float64)), max_iter=0)
