"""The PyHessian engine against the exact dense Hessian of a tiny MLP (torch.func.hessian, float64).

PyHessian's power iteration stops when the eigenvalue changes by < tol relative between iterates and runs
in float32, so its numbers are checked to a few times its tol; its trace to a few standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hessian_spectra.curvature.engines import pyhessian_density, pyhessian_top_eigenvalues, pyhessian_trace
from hessian_spectra.errors import SpectraError
from torch.func import functional_call, hessian

pytest.importorskip("pyhessian")


def tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x = torch.randn(32, 4)
    y = torch.randint(0, 3, (32,))
    return model, torch.nn.CrossEntropyLoss(), x, y


def exact_eigenvalues(model, crit, x, y) -> np.ndarray:
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().to(torch.float64) for _, p in model.named_parameters()]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def loss(f):
        chunks = torch.split(f, sizes)
        ps = {n: c.reshape(p.shape) for n, c, p in zip(names, chunks, params, strict=True)}
        return crit(functional_call(model, ps, (x.to(torch.float64),)), y)

    return torch.linalg.eigvalsh(hessian(loss)(flat)).numpy()


def test_top_eigenvalues_match_exact_hessian():
    model, crit, x, y = tiny_problem()
    ev = exact_eigenvalues(model, crit, x, y)
    by_mag = ev[np.argsort(-np.abs(ev))]
    assert by_mag[0] == ev[-1]  # on this problem the largest |lambda| is lambda_max
    model.train()
    rng_before = torch.get_rng_state()
    res = pyhessian_top_eigenvalues(model, crit, (x, y), top_n=2, max_iter=1000, tol=1e-6, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert model.training and all(p.grad is None for p in model.parameters())  # mode and grads restored
    np.testing.assert_allclose(res.eigenvalues, by_mag[:2], rtol=1e-4)
    # its default tol=1e-3 stopping rule: accurate to about that
    loose = pyhessian_top_eigenvalues(model, crit, (x, y), top_n=1, seed=0)
    assert loose.eigenvalues[0] == pytest.approx(ev[-1], rel=1e-2)
    again = pyhessian_top_eigenvalues(model, crit, (x, y), top_n=1, seed=0)
    assert again.eigenvalues == loose.eigenvalues  # seeded
    assert loose.to_dict()["method"] == "pyhessian-power"


def test_data_loader_path_matches_single_batch():
    model, crit, x, y = tiny_problem()
    ev = exact_eigenvalues(model, crit, x, y)
    loader = [(x[:16], y[:16]), (x[16:], y[16:])]  # equal halves: mean of batch Hessians = full Hessian
    res = pyhessian_top_eigenvalues(model, crit, loader, top_n=1, max_iter=1000, tol=1e-6)
    assert res.eigenvalues[0] == pytest.approx(ev[-1], rel=1e-4)
    one = pyhessian_top_eigenvalues(model, crit, [(x, y)], top_n=1, max_iter=1000, tol=1e-6)
    assert one.eigenvalues[0] == pytest.approx(ev[-1], rel=1e-4)


def test_trace_within_its_standard_error():
    model, crit, x, y = tiny_problem()
    exact = float(exact_eigenvalues(model, crit, x, y).sum())
    est = pyhessian_trace(model, crit, (x, y), max_iter=200, tol=0.0, seed=1)
    assert est.num_probes == 200 and est.method == "pyhessian-hutchinson"
    assert abs(est.value - exact) <= 4 * est.stderr
    assert est.stderr < 0.2 * abs(exact)


def test_density_refuses_with_pointer_and_bad_inputs():
    with pytest.raises(SpectraError, match=r"torch.eig.*spectra\.slq"):
        pyhessian_density()
    model, crit, x, y = tiny_problem()
    with pytest.raises(SpectraError, match="float32"):
        pyhessian_top_eigenvalues(model.double(), crit, (x.double(), y))
    with pytest.raises(SpectraError, match="empty"):
        pyhessian_trace(tiny_problem()[0], crit, [])
